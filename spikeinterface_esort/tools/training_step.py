"""Training on one window, alone: the training step of a sort (reading the window, epochs, thresholds) on a saved
recording with saved annotations, and nothing else, to time it and compare training settings.

    python -m spikeinterface_esort.tools.training_step --recording esort_benchmark_long/length_600s/recording.json \
        --annotations esort_settings/long/teacher_annotations/sorting \
        --set epochs=6 learning_rate=0.01

The annotations are a SpikeInterface sorting folder in the recording's time base (a teacher's sorting, ground
truth), read as ``annotation_sorting_path`` reads them (as given: no curation). The window is the one esort's
parameters choose on the recording (``train_duration_s``, ``train_pieces``; ``--set`` changes them like any other
parameter, values in JSON). Printed: the step's log (its timestamps give reading the window and choosing the
thresholds), the time of the whole step and of each epoch, the validation loss of each epoch, and the mean held-out
accuracy of the units against the annotations (thresholds chosen per unit, as the sort's log reports it). Speed of
one batch alone: ``training_speed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", required=True, help="a saved recording (folder or .json)")
    parser.add_argument("--annotations", required=True, help="a saved sorting folder, in the recording's time base")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=JSON", help="esort parameters to change")
    parser.add_argument("--n-jobs", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)

    import spikeinterface.core as sc
    import torch

    from ..annotation import annotate, training_window
    from ..device import resolve_device, torch_threads
    from ..jobs import resolve_job_kwargs
    from ..model import fit_model
    from ..parameters import default_params, validate_params
    from ..preprocessing import estimate_noise_levels, preprocess

    params = default_params()
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = json.loads(value)
    params["annotation_sorting_path"] = args.annotations
    validate_params(params)
    n_jobs = resolve_job_kwargs(dict(n_jobs=args.n_jobs if args.n_jobs else -1))["n_jobs"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recording = sc.load(args.recording)
    device = resolve_device(params["torch_device"])
    with torch_threads(n_jobs), tempfile.TemporaryDirectory() as folder:
        preprocessed = preprocess(recording, params)
        window = training_window(recording, params)
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


if __name__ == "__main__":
    main()
