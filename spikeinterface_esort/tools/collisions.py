"""Recall of spikes in collision: which ground-truth spikes each sorter misses, those that overlap a nearby
neuron's spike or the isolated ones.

    python -m spikeinterface_esort.tools.collisions --ground-truth esort_benchmark_long/length_600s/ground_truth \
        --sortings esort=esort_benchmark_long/length_600s/study/results/esort/sorting \
        spykingcircus2=esort_benchmark_long/length_600s/study/results/spykingcircus2/sorting \
        --held-out-of esort_benchmark_long/length_600s/recording.json

A truth spike is *in collision* when another truth unit whose location (the sorting's ``gt_unit_locations``
property, as SpikeInterface's generators set it) lies within ``--radius-um`` fires within ``--lag-ms`` of it: the
two waveforms overlap on the same channels. Each sorting is matched to the truth with
``compare_sorter_to_ground_truth`` (``compute_labels``: every truth spike is a true positive or a miss of its
matched unit); printed per sorter: the share of truth spikes in collision, the recall of the isolated spikes and of
those in collision (pooled over the units). ``--held-out-of RECORDING`` leaves out the
truth spikes inside esort's default training window on that recording (the pieces ``run_sorter`` trains on there),
as the benchmark scores.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..validation import nearest_index


def collision_mask(ground_truth, radius_um: float, lag_ms: float) -> dict:
    """For each truth unit, a boolean array over its spikes (segment 0): True where a truth unit located within
    ``radius_um`` (``gt_unit_locations``) fires within ``lag_ms``."""
    locations = ground_truth.get_property("gt_unit_locations")
    if locations is None:
        raise ValueError("The ground-truth sorting has no 'gt_unit_locations' property (SpikeInterface's generators "
                         "set it): collisions need where each unit lies.")
    locations = np.asarray(locations, dtype="float64")[:, :2]
    lag = int(round(lag_ms * ground_truth.get_sampling_frequency() / 1000.0))
    trains = [ground_truth.get_unit_spike_train(u, segment_index=0) for u in ground_truth.unit_ids]
    masks = {}
    for i, unit in enumerate(ground_truth.unit_ids):
        near = np.flatnonzero(np.linalg.norm(locations - locations[i], axis=1) <= radius_um)
        others = np.sort(np.concatenate([trains[j] for j in near if j != i] + [np.zeros(0, dtype=np.int64)]))
        spikes = trains[i]
        if len(others) == 0:
            masks[unit] = np.zeros(len(spikes), dtype=bool)
            continue
        masks[unit] = np.abs(others[nearest_index(others, spikes)] - spikes) <= lag
    return masks


def collision_recall(ground_truth, sorting, masks: dict, kept: dict | None = None) -> dict:
    """Recall of the isolated truth spikes and of those in collision (``masks``, pooled over units; ``kept``: the
    truth spikes to count, per unit) and the share of them in collision."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comparison = compare_sorter_to_ground_truth(ground_truth, sorting, exhaustive_gt=True, compute_labels=True)
    found = {True: [0, 0], False: [0, 0]}  # in collision -> [hits, spikes]
    for unit in ground_truth.unit_ids:
        hits = np.asarray(comparison.get_labels1(unit)[0]) == "TP"
        collided = masks[unit]
        keep = np.ones(len(hits), dtype=bool) if kept is None else kept[unit]
        for flag in (True, False):
            chosen = keep & (collided == flag)
            found[flag][0] += int(hits[chosen].sum())
            found[flag][1] += int(chosen.sum())
    spikes = found[True][1] + found[False][1]
    return dict(
        share_in_collision=found[True][1] / max(spikes, 1),
        recall_isolated=found[False][0] / max(found[False][1], 1),
        recall_in_collision=found[True][0] / max(found[True][1], 1),
    )


def held_out_spikes(ground_truth, recording) -> dict:
    """Per truth unit, True for the spikes outside esort's default training window on ``recording`` (its frames as
    ``run_sorter`` places them: ``annotation.training_window``)."""
    from ..annotation import training_window
    from ..parameters import default_params

    window = training_window(recording, default_params())
    return {unit: ~window.to_training_frames(ground_truth.get_unit_spike_train(unit, segment_index=0))[0]
            for unit in ground_truth.unit_ids}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground-truth", required=True, help="a saved ground-truth sorting (with gt_unit_locations)")
    parser.add_argument("--sortings", nargs="+", required=True, metavar="NAME=FOLDER", help="saved sortings to score")
    parser.add_argument("--radius-um", type=float, default=60.0, help="neighbours within this distance (um)")
    parser.add_argument("--lag-ms", type=float, default=1.5, help="spikes within this lag collide (ms)")
    parser.add_argument("--held-out-of", default=None, metavar="RECORDING",
                        help="leave out the spikes in esort's default training window on this saved recording")
    args = parser.parse_args(argv)

    import spikeinterface.core as sc

    ground_truth = sc.load(args.ground_truth)
    masks = collision_mask(ground_truth, args.radius_um, args.lag_ms)
    kept = None
    if args.held_out_of is not None:
        kept = held_out_spikes(ground_truth, sc.load(args.held_out_of))
    print(f"collision: a truth unit within {args.radius_um:g} um fires within {args.lag_ms:g} ms"
          f"{'; the spikes in esort default training window left out' if kept is not None else ''}")
    print("| sorter | truth spikes in collision | recall, isolated | recall, in collision |")
    print("| --- | --- | --- | --- |")
    for item in args.sortings:
        name, _, folder = item.partition("=")
        scores = collision_recall(ground_truth, sc.load(folder), masks, kept)
        print(f"| {name} | {scores['share_in_collision']:.3f} | {scores['recall_isolated']:.3f} | "
              f"{scores['recall_in_collision']:.3f} |")


if __name__ == "__main__":
    main()
