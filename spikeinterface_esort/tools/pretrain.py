"""Pretraining: backbone weights for transfer learning, from SpikeInterface's generators.

One backbone is trained on several ground-truth recordings of one probe layout: a
*corpus* (``--corpus N``: N recordings from ``generate_drifting_recording``, each with its
own noise, firing rates, unit density, drift and template shapes, ``datasets.corpus_spec``),
or, with ``--seeds`` alone, recordings from ``generate_ground_truth_recording`` that differ
only in seed and noise. The network is esort's default one (its ``spatial_radius_um`` too),
so that every backbone layer transfers to a default run. Every recording has its own head
(its own units) on the shared backbone; batches of all recordings alternate.
The last ``validation_fraction`` of each recording is held out: its loss stops training
early, and the card reports each recording's held-out accuracy (threshold 0.5, no
threshold chosen on scored data) with SpikeInterface's ``compare_sorter_to_ground_truth``.

    python -m spikeinterface_esort.tools.pretrain --layout grid --channels 32 --corpus 20 --test-recordings 2 --out pretrained

``--test-recordings M`` generates M more corpus recordings (seeds after the corpus's) and sorts each twice with
``run_sorter`` and ground-truth annotations of its first half: from the new backbone and from scratch; the card
gives both held-out accuracies and times.

writes ``<out>/<name>.pt`` (float16 backbone state dict), ``<name>.json`` (model card read by
``transfer``) and ``<name>.md`` (the card for people).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .datasets import LAYOUTS, generate_corpus_dataset, generate_dataset, held_out_performance, sort_and_score, summarise
from ..device import resolve_device, torch_threads
from ..inference import detect_in_recording
from ..model import ESortModel
from ..network import ESortNetwork, network_window_samples
from ..parameters import default_params
from ..output import make_sorting
from ..postprocessing import smoothing_taps
from ..preprocessing import estimate_noise_levels, preprocess
from ..training import DriftAugmentation, TrainingTask, WindowSampler, drift_augmentation_range, load_traces, train_networks
from ..transfer import CHANNEL_LAYERS, TEMPORAL_LAYERS, backbone_state

logger = logging.getLogger("spikeinterface_esort")


def _dataset(folder: Path, layout: str, channels: int, units: int, duration_s: float, seed: int, noise_uv: float | None,
             params):
    """A pretraining recording, preprocessed, with its noise levels and sorted spikes; ``noise_uv`` None: a corpus
    recording (``generate_corpus_dataset``), else ``generate_dataset`` with ``units`` units at that noise."""
    spec = None
    if noise_uv is None:
        recording, ground_truth, spec = generate_corpus_dataset(folder / f"corpus_{layout}{channels}_seed{seed}", layout,
                                                                channels, seed, duration_s, n_jobs=os.cpu_count() or 1)
        noise_uv = spec["noise_level_uv"]
    else:
        recording, ground_truth = generate_dataset(
            folder / f"{layout}{channels}_seed{seed}_noise{noise_uv:g}", num_channels=channels, num_units=units,
            duration_s=duration_s, seed=seed, noise_level_uv=noise_uv, layout=layout,
        )
    preprocessed = preprocess(recording, params)
    noise = estimate_noise_levels(preprocessed, seed=params["seed"], progress_bar=False)
    spikes = ground_truth.to_spike_vector()
    order = np.argsort(spikes["sample_index"], kind="stable")
    return dict(
        recording=recording, ground_truth=ground_truth, preprocessed=preprocessed, noise=noise,
        samples=spikes["sample_index"][order].astype(np.int64), units=spikes["unit_index"][order].astype(np.int64),
        unit_ids=np.asarray(ground_truth.unit_ids), seed=seed, noise_uv=noise_uv, spec=spec,
    )


def pretrain(
    layout: str,
    channels: int,
    out: str | Path,
    work_folder: str | Path,
    seeds: list[int],
    noise_levels_uv: list[float],
    units: int,
    duration_s: float,
    epochs: int,
    name: str | None = None,
    command: str = "",
    corpus: bool = False,
    spikes_per_epoch: int | None = None,
    spatial_radius_um: float | None | str = "default",
    test_seeds: tuple[int, ...] = (),
    test_duration_s: float = 40.0,
) -> dict:
    """Train one backbone on ``len(seeds)`` generated recordings; write ``out/<name>.{pt,json,md}``; return the card.

    ``corpus``: each seed is a corpus recording (``corpus_spec``; ``noise_levels_uv`` and ``units`` unused), else a
    ``generate_ground_truth_recording`` of ``units`` units at the noise levels (cycled). ``spikes_per_epoch``: spikes
    of each recording drawn per epoch (None: every spike). ``spatial_radius_um``: the network's (``"default"``:
    esort's default; None: dense). ``test_seeds``: corpus recordings of ``test_duration_s`` s, not in the corpus,
    each sorted from the backbone and from scratch (see the module's docstring)."""
    t_start = time.perf_counter()
    params = default_params()
    params["epochs"] = epochs
    if spatial_radius_um != "default":
        params["spatial_radius_um"] = spatial_radius_um
    device = resolve_device(params["torch_device"])
    fs = 30000.0
    name = name or f"{layout}-{channels}ch-{int(fs / 1000)}khz"
    work_folder, out = Path(work_folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(params["seed"])

    datasets = [
        _dataset(work_folder, layout, channels, units, duration_s, seed,
                 None if corpus else noise_levels_uv[i % len(noise_levels_uv)], params)
        for i, seed in enumerate(seeds)
    ]
    window = network_window_samples(params["window_ms"], fs)
    jitter = int(round(params["jitter_ms"] * fs / 1000.0))
    locations = datasets[0]["preprocessed"].get_channel_locations()
    networks = []
    for d in datasets:
        net = ESortNetwork(channels, window, len(d["unit_ids"]), tuple(params["temporal_features"]), params["hidden_size"],
                           params["spatial_radius_um"])
        if networks:  # share the backbone of the first network; keep this recording's head
            for layer in (*TEMPORAL_LAYERS, *CHANNEL_LAYERS):
                setattr(net, layer, getattr(networks[0], layer))
        net.set_channel_locations(locations)  # each network masks the shared spatial filter alike
        networks.append(net.to(device))
        num = d["recording"].get_num_samples()
        split = int(round(num * (1 - params["validation_fraction"])))
        d["split"] = split
        d["traces"] = load_traces(d["preprocessed"], 0, num, d["noise"], chunk_size=30000, progress_bar=False).to(device)
        d["train"] = WindowSampler(d["samples"], d["units"], len(d["unit_ids"]), 0, split, window, jitter)
        d["validation"] = WindowSampler(d["samples"], d["units"], len(d["unit_ids"]), split, num, window, jitter)
    shift = drift_augmentation_range(params["drift_augmentation_um"], locations)
    augmentation = DriftAugmentation(locations, shift, device) if shift >= 1 else None
    params["spikes_per_epoch"] = spikes_per_epoch  # of each recording; None: every annotated spike, each epoch
    tasks = [TrainingTask(net, d["traces"], d["train"], d["validation"]) for net, d in zip(networks, datasets)]
    result = train_networks(tasks, params, device, progress_bar=True, augmentation=augmentation)
    history = [dict(epoch=i + 1, train_loss=t, validation_loss=v, seconds=e) for i, (t, v, e) in
               enumerate(zip(result["train_loss"], result["validation_loss"], result["epoch_s"]))]
    training_s = time.perf_counter() - t_start

    figures = []
    for net, d in zip(networks, datasets):
        model = ESortModel(net.eval(), fs, d["preprocessed"].channel_ids, locations, d["noise"], d["unit_ids"],
                           smoothing_taps(params["smoothing_ms"], fs))
        num = d["recording"].get_num_samples()
        detected = detect_in_recording(model, d["preprocessed"], 30000, False, frame_range=(d["split"], num))
        sorting = make_sorting(detected, d["unit_ids"], fs, 1)
        scores = summarise(held_out_performance(sorting, d["ground_truth"], d["split"]))
        figures.append(dict(seed=d["seed"], noise_uv=d["noise_uv"], **{k: scores[k] for k in ("accuracy", "precision", "recall", "well_detected", "num_units")}))
        print(f"held out, seed {d['seed']} noise {d['noise_uv']:g} uV: accuracy {scores['accuracy']:.3f}", flush=True)

    state = backbone_state(networks[0])
    torch.save(state, out / f"{name}.pt")
    config = networks[0].config()
    config.pop("num_units")
    card = dict(
        name=name,
        network=config,
        sampling_frequency=fs,
        layout=layout,
        num_channels=channels,
        channel_locations=np.asarray(locations).tolist(),
        window_ms=params["window_ms"],
        training_data=dict(
            generator="spikeinterface.generation.generate_drifting_recording (spikeinterface_esort.tools.datasets."
                      "corpus_spec)" if corpus else "spikeinterface.core.generate_ground_truth_recording",
            seeds=list(seeds),
            noise_levels_uv=[d["noise_uv"] for d in datasets],
            units_per_recording=[len(d["unit_ids"]) for d in datasets] if corpus else units, duration_s=duration_s,
            drift=("each recording's own (corpus_spec), and " if corpus else "") +
                  f"drift augmentation +-{shift:g} um (kriging re-sampling along the probe)",
            preprocessing={k: params[k] for k in ("freq_min", "freq_max", "common_reference", "filter_method")},
            firing_rates="each recording's own (corpus_spec)" if corpus else "generator default (15 Hz)",
            recordings=[d["spec"] for d in datasets] if corpus else None,
        ),
        recipe=dict(epochs_run=len(history), best_epoch=result["best_epoch"],
                    **{k: params[k] for k in ("learning_rate", "batch_size", "spikes_per_epoch", "jitter_ms",
                                              "negative_ratio", "windows_per_spike", "validation_fraction", "patience",
                                              "seed", "spatial_radius_um")}),
        validation=dict(
            note="held-out last fraction of each pretraining recording, threshold 0.5, compare_sorter_to_ground_truth",
            recordings=figures, mean_accuracy=float(np.mean([f["accuracy"] for f in figures])),
        ),
        tests=[],
        history=history,
        command=command,
        wall_time_s=round(time.perf_counter() - t_start, 1),
        training_time_s=round(training_s, 1),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {device}",
        versions=dict(torch=torch.__version__, python=platform.python_version()),
        date=datetime.date.today().isoformat(),
        file_bytes=(out / f"{name}.pt").stat().st_size,
    )
    import spikeinterface

    card["versions"]["spikeinterface"] = spikeinterface.__version__
    (out / f"{name}.json").write_text(json.dumps(card, indent=1), encoding="utf8")
    (out / f"{name}.md").write_text(card_markdown(card), encoding="utf8")
    if test_seeds:  # the written backbone, as a user would pass it
        card["tests"] = [_test_recording(work_folder, layout, channels, seed, test_duration_s, out / f"{name}.pt")
                         for seed in test_seeds]
        (out / f"{name}.json").write_text(json.dumps(card, indent=1), encoding="utf8")
        (out / f"{name}.md").write_text(card_markdown(card), encoding="utf8")
    return card


def _test_recording(work_folder: Path, layout: str, channels: int, seed: int, duration_s: float, backbone: Path) -> dict:
    """A corpus recording the backbone never saw, sorted with ``run_sorter`` (defaults, ground-truth annotations of
    its first half) from ``backbone`` and from scratch; held-out accuracy of each on its second half."""
    folder = work_folder / f"test_{layout}{channels}_seed{seed}"
    recording, ground_truth, spec = generate_corpus_dataset(folder, layout, channels, seed, duration_s,
                                                            n_jobs=os.cpu_count() or 1)
    half = recording.get_num_samples() // 2
    row = dict(seed=seed, noise_uv=spec["noise_level_uv"], num_units=spec["num_units"], drift_um=spec["drift_um"])
    for start, weights in (("pretrained", str(backbone)), ("scratch", None)):
        _, scores, _ = sort_and_score(
            "esort", recording, ground_truth, folder / f"esort_{start}", half,
            annotation_sorting_path=str(folder / "ground_truth"), train_duration_s=duration_s / 2,
            pretrained_weights=weights,
        )
        row[f"{start}_accuracy"], row[f"{start}_time_s"] = round(scores["accuracy"], 4), round(scores["time_s"], 1)
        print(f"test recording seed {seed}, {start}: held-out accuracy {scores['accuracy']:.3f} in {scores['time_s']:.1f} s",
              flush=True)
    return row


def card_markdown(card: dict) -> str:
    """The model card for people, from the JSON card."""
    data, val = card["training_data"], card["validation"]
    specs = {r["seed"]: r for r in (data.get("recordings") or [])}
    rows = "\n".join(
        f"| {f['seed']} | {f['noise_uv']:g} | {f['num_units']} | "
        + (f"{specs[f['seed']]['firing_rates_hz'][0]:g}-{specs[f['seed']]['firing_rates_hz'][1]:g} | "
           f"{specs[f['seed']]['drift_um']:g} | " if specs else "")
        + f"{f['accuracy']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} | {f['well_detected']}/{f['num_units']} |"
        for f in val["recordings"]
    )
    corpus_columns = ("firing rates (Hz) | drift (um) | ", "--- | --- | ") if specs else ("", "")
    units = data["units_per_recording"]
    units_words = (f"{min(units)}-{max(units)} units ({sum(units)} in all)" if isinstance(units, list)
                   else f"{units} units each")
    net = card["network"]
    spatial = (f"a local spatial filter ({net['spatial_radius_um']:g} um) to {net['hidden_size']} features"
               if net.get("spatial_radius_um") is not None else f"a dense spatial filter to {net['hidden_size']} features")
    tests = card.get("tests") or []
    test_section = ""
    if tests:
        test_rows = "\n".join(
            f"| {t['seed']} | {t['noise_uv']:g} | {t['num_units']} | {t['drift_um']:g} | {t['pretrained_accuracy']:.3f} | "
            f"{t['scratch_accuracy']:.3f} | {t['pretrained_time_s']:g} / {t['scratch_time_s']:g} |" for t in tests
        )
        test_section = f"""
## On recordings not in the corpus

Corpus recordings of other seeds, sorted with `run_sorter("esort", ...)` (defaults; ground-truth annotations of the
first half, `train_duration_s` = half the recording) from this backbone (`pretrained_weights=<this .pt>`) and from
scratch; held-out accuracy on the second half, `compare_sorter_to_ground_truth`.

| seed | noise (uV) | units | drift (um) | pretrained | scratch | wall time (s), pretrained / scratch |
| --- | --- | --- | --- | --- | --- | --- |
{test_rows}
"""
    return f"""# Backbone `{card['name']}`

Pretrained E-Sort backbone (temporal filters {net['temporal_features']}, {spatial}): use it with
`pretrained_weights="{card['name']}"` (or `"auto"` on this layout).
Generated by the command below; do not edit by hand.

- Probe layout: `{card['layout']}`, {card['num_channels']} channels (contact positions in `{card['name']}.json`).
- Sampling rate: {card['sampling_frequency']:g} Hz; window {net['window_samples']} samples ({card['window_ms']} ms).
- Training data: {len(data['seeds'])} recordings from `{data['generator']}`, seeds {data['seeds']},
  noise {data['noise_levels_uv']} uV, {units_words} ({data['firing_rates']}),
  {data['duration_s']:g} s each; drift: {data['drift']}; preprocessing {data['preprocessing']}.
- Recipe: one head per recording on the shared backbone; {card['recipe']}.
- File: `{card['name']}.pt`, {card['file_bytes'] / 1e6:.2f} MB (float16 state dict, no head).
- Pretraining time: {card['wall_time_s']:g} s in all ({card['training_time_s']:g} s generating and training), on
  {card['machine']}; {card['versions']}; {card['date']}.

## Validation ({val['note']})

| seed | noise (uV) | units | {corpus_columns[0]}accuracy | precision | recall | accuracy > 0.8 |
| --- | --- | --- | {corpus_columns[1]}--- | --- | --- | --- |
{rows}

Mean held-out accuracy: {val['mean_accuracy']:.3f}.
{test_section}
## Reproduce

```bash
{card['command']}
```
"""


def _radius(text: str) -> float | None | str:
    """``--spatial-radius-um``: 'default', 'none' (a dense filter) or a positive number of um."""
    if text in ("default", "none"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a radius in um (> 0), 'none' or 'default', got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=LAYOUTS, default="grid")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104])
    parser.add_argument("--noise", type=float, nargs="+", default=[5.0, 10.0], help="noise levels (uV), cycled over seeds")
    parser.add_argument("--corpus", type=int, default=None, metavar="N",
                        help="N corpus recordings (seeds from the first of --seeds on; varied noise, firing rates, "
                             "density, drift and templates) instead of one recording per seed")
    parser.add_argument("--test-recordings", type=int, default=0, metavar="M",
                        help="M corpus recordings after the corpus's seeds, sorted from the backbone and from scratch")
    parser.add_argument("--test-duration", type=float, default=40.0, help="s per test recording")
    parser.add_argument("--spikes-per-epoch", type=int, default=None,
                        help="spikes of each recording drawn per epoch (default: every spike)")
    parser.add_argument("--spatial-radius-um", type=_radius, default="default",
                        help="the network's local spatial filter radius (um), 'none' for a dense one; default: esort's")
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="s per recording")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", default="pretrained")
    parser.add_argument("--work-folder", default="esort_pretrain", help="where the generated recordings are saved")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    command = "python -m spikeinterface_esort.tools.pretrain " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    with torch_threads(os.cpu_count() or 1):
        seeds = list(range(args.seeds[0], args.seeds[0] + args.corpus)) if args.corpus else args.seeds
        test_seeds = tuple(range(seeds[-1] + 1, seeds[-1] + 1 + args.test_recordings))
        card = pretrain(args.layout, args.channels, args.out, args.work_folder, seeds, args.noise, args.units,
                        args.duration, args.epochs, args.name, command, corpus=bool(args.corpus),
                        spikes_per_epoch=args.spikes_per_epoch, spatial_radius_um=args.spatial_radius_um, test_seeds=test_seeds,
                        test_duration_s=args.test_duration)
    print(f"wrote {Path(args.out) / card['name']}.pt ({card['file_bytes'] / 1e6:.2f} MB), mean held-out accuracy "
          f"{card['validation']['mean_accuracy']:.3f}, {card['wall_time_s']:g} s")


if __name__ == "__main__":
    main()
