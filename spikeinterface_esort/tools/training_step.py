"""Training on one window, alone: the training step of a sort (reading the window, epochs, thresholds) on a saved
recording with saved annotations, and nothing else, to time it and compare training settings.

    python -m spikeinterface_esort.tools.training_step --recording esort_benchmark_long/length_600s/recording.json \
        --annotations esort_settings/long/teacher_annotations/sorting \
        --set epochs=6 learning_rate=0.01

The annotations are a SpikeInterface sorting folder in the recording's time base (a teacher's sorting, ground
truth), read as ``annotation_sorting_path`` reads them (as given: no curation), or the folder of an esort sort of
this recording with its own teacher (``run_sorter``'s folder): then the labels that sort trained on (its teacher's
units on its window after its curation: ``sorter_output/training_annotations``) and that sort's parameters, which
``--set`` changes. The window is the one esort's parameters choose on the recording (``train_duration_s``,
``train_pieces``; ``--set`` changes them like any other parameter, values in JSON). Printed: the step's log (its
timestamps give reading the window and choosing the thresholds), the time of the whole step and of each epoch, the
validation loss of each epoch, and the mean held-out accuracy of the units against the annotations (thresholds
chosen per unit, as the sort's log reports it). With ``--ground-truth`` and ``--score-s START END``, the trained
model also sorts that stretch of the recording (outside the window) and is scored there against the ground truth
with ``compare_sorter_to_ground_truth``: what the annotations' own held-out agreement cannot tell when they are a
teacher's. Speed of one batch alone: ``training_speed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", required=True, help="a saved recording (folder or .json)")
    parser.add_argument("--annotations", required=True,
                        help="a saved sorting folder in the recording's time base, or an esort run_sorter folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=JSON", help="esort parameters to change")
    parser.add_argument("--n-jobs", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--ground-truth", default=None, help="a saved ground-truth sorting, to score --score-s against")
    parser.add_argument("--score-s", nargs=2, type=float, default=None, metavar=("START", "END"),
                        help="sort this stretch (s) with the trained model and score it against --ground-truth")
    args = parser.parse_args(argv)
    if (args.ground_truth is None) != (args.score_s is None):
        parser.error("--ground-truth and --score-s go together")

    import spikeinterface.core as sc
    import torch

    from ..annotation import annotate, training_window
    from ..device import resolve_device, torch_threads
    from ..jobs import resolve_job_kwargs
    from ..model import fit_model
    from ..parameters import default_params, validate_params
    from ..preprocessing import estimate_noise_levels, preprocess

    params = default_params()
    sort_folder, run_params = Path(args.annotations), None
    if (sort_folder / "sorter_output" / "model" / "model.json").is_file():  # as that sort trained, --set over it
        run_params = json.loads((sort_folder / "spikeinterface_params.json").read_text())["sorter_params"]
        params.update({k: v for k, v in run_params.items() if k in params and k != "job_kwargs"})
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = json.loads(value)
    params["annotation_sorting_path"] = args.annotations
    validate_params(params)
    n_jobs = resolve_job_kwargs(dict(n_jobs=args.n_jobs if args.n_jobs else -1))["n_jobs"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recording = sc.load(args.recording)
    if args.ground_truth is not None:  # checked before the training, not after
        frames = score_frames(recording, args.score_s)
        ground_truth = sc.load(args.ground_truth)
    device = resolve_device(params["torch_device"])
    with torch_threads(n_jobs), tempfile.TemporaryDirectory() as folder:
        preprocessed = preprocess(recording, params)
        window = training_window(recording, params)
        if run_params is not None:
            params["annotation_sorting_path"] = str(trained_labels(sort_folder, run_params, recording,
                                                                   Path(folder) / "labels"))
        noise_levels = estimate_noise_levels(window.teacher_recording(preprocessed), seed=params["seed"], n_jobs=n_jobs)
        annotations = annotate(recording, window, params, folder, False)
        start = time.perf_counter()
        model, _ = fit_model(preprocessed, annotations, window, noise_levels, params, device,
                             int(recording.get_sampling_frequency()), False, n_jobs=n_jobs)
        total = time.perf_counter() - start
    history = model.validation["training_history"]
    accuracies = [unit["accuracy"] for unit in model.validation["units"] if unit["validation_spikes"] > 0]
    print(f"{recording.get_num_channels()} channels, window {window.describe(recording.get_sampling_frequency())}; "
          f"{annotations.num_units} units, {len(annotations.sample_index)} annotated spikes; torch {torch.__version__}, "
          f"{n_jobs} threads, {device}")
    print(f"training + thresholds: {total:.1f} s; epochs: {', '.join(f'{s:.1f}' for s in history['epoch_s'])} s")
    print("validation loss per epoch: " + ", ".join(f"{loss:.5f}" for loss in history["validation_loss"]))
    print(f"best epoch {history['best_epoch']}; held-out accuracy against the annotations, mean over "
          f"{len(accuracies)} units: {np.mean(accuracies):.3f}")
    if args.ground_truth is not None:
        print(score_against_ground_truth(model, recording, window, ground_truth, frames, n_jobs))


def trained_labels(sorter_folder: Path, run_params: dict, recording, folder: Path) -> Path:
    """The labels an esort sort of ``recording`` (run with ``run_params``) trained on, in the recording's time base:
    the sort's ``sorter_output/training_annotations`` (its teacher's units after curation), or for a sort that has
    none (saved before esort kept them), its teacher's sorting (``sorter_output/annotation_sorter``) mapped from
    that sort's window pieces, with the units of its model only, saved in ``folder``. Returns the sorting's
    folder."""
    import spikeinterface.core as sc

    from ..annotation import training_window
    from ..parameters import default_params

    output = sorter_folder / "sorter_output"
    if (output / "training_annotations").is_dir():
        return output / "training_annotations"
    teacher = output / "annotation_sorter" / "sorter_output" / "sorting"
    if not teacher.is_dir():
        raise ValueError(f"{sorter_folder} holds no single teacher's sorting ({teacher}): give a sorting folder, or "
                         "the folder of an esort sort with one annotation_sorter.")
    window = training_window(recording, dict(default_params(), **run_params))
    sorting = sc.load(teacher)
    spikes = sorting.to_spike_vector()
    inside, frames = window.from_pieces_frames(spikes["sample_index"])
    units = np.asarray(sorting.unit_ids)[spikes["unit_index"][inside]]
    trained = {str(u) for u in json.loads((output / "model" / "model.json").read_text())["unit_ids"]}
    labels = sc.NumpySorting.from_samples_and_labels([frames], [units], recording.get_sampling_frequency(),
                                                     unit_ids=sorting.unit_ids)
    labels.select_units([u for u in sorting.unit_ids if str(u) in trained]).save(folder=folder)
    return folder


def score_frames(recording, score_s: list[float]) -> tuple[int, int]:
    """``score_s`` = [start, end] (s) as frames of ``recording``'s first segment; ValueError outside it."""
    fs = recording.get_sampling_frequency()
    start, end = (int(round(t * fs)) for t in score_s)
    if not 0 <= start < end <= recording.get_num_samples(segment_index=0):
        raise ValueError(f"--score-s {score_s[0]:g} {score_s[1]:g} is not a stretch of the recording's first segment "
                         f"(0-{recording.get_num_samples(segment_index=0) / fs:.1f} s)")
    return start, end


def score_against_ground_truth(model, recording, window, ground_truth, frames: tuple[int, int], n_jobs: int) -> str:
    """Sort ``frames`` = (start, end) of ``recording`` with ``model`` (an ``ESortModel``) and score it against
    ``ground_truth`` (``compare_sorter_to_ground_truth``, every truth unit); one line of means, and how much of the
    stretch lies in the training ``window``."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    fs = recording.get_sampling_frequency()
    start, end = frames
    overlap = sum(max(0, min(end, e) - max(start, s)) for s, e in window.pieces)
    sorting = model.sort(recording.frame_slice(start, end), job_kwargs=dict(n_jobs=n_jobs, progress_bar=False))
    performance = compare_sorter_to_ground_truth(ground_truth.frame_slice(start, end), sorting,
                                                 exhaustive_gt=True).get_performance()
    return (f"against ground truth on {start / fs:g}-{end / fs:g} s ({overlap / fs:.1f} s of it in the training "
            f"window): accuracy {performance['accuracy'].mean():.3f}, precision {performance['precision'].mean():.3f}, "
            f"recall {performance['recall'].mean():.3f}, well detected (>= 0.8) "
            f"{int((performance['accuracy'] >= 0.8).sum())}/{len(performance)}; {len(sorting.unit_ids)} units")


if __name__ == "__main__":
    main()
