"""``run_esort``: the whole E-Sort pipeline, one step per module.

recording -> preprocessing (``preprocessing``) -> annotation (``annotation``) -> training and thresholds
(``model.fit_model``: ``training``, ``transfer``, ``validation``) -> inference + post-processing (``inference``,
``postprocessing``) -> sorting (``output``). Everything it writes goes to ``sorter_output`` (see ``docs/`` for
the layout); the log is ``esort.log`` there (``jobs``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, NumpySorting

from .annotation import annotate, check_annotation_source, checked_annotations, training_window
from .annotation_curation import check_annotation_curation, curate_annotations, resolve_annotation_curation
from .device import resolve_device, resolve_precision, torch_threads
from .inference import detect_in_recording
from .jobs import StepTimer, chunk_size_from_job_kwargs, file_log, resolve_job_kwargs, run_summary
from .model import fit_model
from .network import network_window_samples
from .output import (check_spike_counts, json_default, make_sorting, save_sorting, save_training_annotations,
                     set_unit_properties)
from .parameters import validate_params
from .preprocessing import (check_preprocessing_params, correct_motion, estimate_noise_levels, in_memory_recording,
                            preprocess)
from .self_training import relabel
from .training import load_traces
from .transfer import resolve_backbone

logger = logging.getLogger("spikeinterface_esort")


def check_inputs(recording: BaseRecording, params: dict) -> None:
    """Every check that can fail before long work starts; each raises ``ValueError`` naming the
    parameter or recording property to fix."""
    validate_params(params)
    check_preprocessing_params(recording, params)
    network_window_samples(params["window_ms"], recording.get_sampling_frequency())
    training_window(recording, params)
    check_annotation_source(recording, params)
    check_annotation_curation(params["annotation_curation"])
    resolve_precision(params, resolve_device(params["torch_device"]))
    resolve_backbone(params["pretrained_weights"], recording.get_channel_locations(), recording.get_sampling_frequency())


def run_esort(recording: BaseRecording, params: dict, sorter_output_folder: str | Path, verbose: bool = False) -> NumpySorting:
    """Sort ``recording`` with E-Sort; write the sorting, model and reports to ``sorter_output_folder``."""
    check_inputs(recording, params)
    folder = Path(sorter_output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    job_kwargs = resolve_job_kwargs(params["job_kwargs"])
    progress_bar = bool(job_kwargs.get("progress_bar", True)) and verbose
    device = resolve_device(params["torch_device"])
    fs = recording.get_sampling_frequency()
    timer = StepTimer()

    with file_log(folder), torch_threads(job_kwargs["n_jobs"]):
        logger.info(
            "esort on %d channels, %g Hz, %d segment(s), %.1f s; device %s, %d CPU threads",
            recording.get_num_channels(), fs, recording.get_num_segments(), recording.get_total_duration(),
            device, job_kwargs["n_jobs"],
        )
        with timer("preprocessing"):
            preprocessed = preprocess(recording, params)
            if params["motion_correction"] is not None:
                preprocessed = correct_motion(
                    preprocessed, params["motion_correction"], folder / "motion", dict(job_kwargs, progress_bar=progress_bar)
                )
            chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
            window = training_window(recording, params)
            logger.info("training window: %s", window.describe(fs))
            noise_levels = estimate_noise_levels(
                window.teacher_recording(preprocessed),
                seed=params["seed"],
                progress_bar=progress_bar,
                n_jobs=job_kwargs["n_jobs"],
            )

        with timer("annotation"):
            annotations = annotate(recording, window, params, folder, verbose)
        with timer("window"):  # read and filtered once, for the curation and every training
            training_recording = window.training_recording(preprocessed)
            window_traces = load_traces(training_recording, 0, window.num_samples, noise_levels, chunk_size,
                                        progress_bar, n_jobs=job_kwargs["n_jobs"])
        curation = resolve_annotation_curation(params)
        if params["annotation_curation"] == "auto":
            logger.info("annotation curation: auto -> %s", "none (a saved sorting is used as given)"
                        if curation is None else json.dumps(curation))
        if curation is not None:
            with timer("curation"):
                # SpikeInterface reads the window from memory, in threads (no copy of it in worker processes)
                annotations = curate_annotations(
                    annotations, in_memory_recording(window_traces, noise_levels, training_recording), curation,
                    folder, dict(job_kwargs, progress_bar=progress_bar, pool_engine="thread"), seed=params["seed"],
                )
                annotations = checked_annotations(annotations, window, params)
        save_training_annotations(annotations, window, fs, folder / "training_annotations")

        model, split = fit_model(
            preprocessed, annotations, window, noise_levels, params, device, chunk_size, progress_bar,
            n_jobs=job_kwargs["n_jobs"], timer=timer, window_traces=window_traces,
        )
        relabelled = annotations  # the annotations stay as given for the units' properties
        for round_index in range(params["self_training_rounds"]):
            with timer("self-training"):
                logger.info("self-training: round %d of %d", round_index + 1, params["self_training_rounds"])
                relabelled, _ = relabel(model, window.training_recording(preprocessed), relabelled, split, params,
                                        chunk_size, progress_bar)
            model, split = fit_model(
                preprocessed, relabelled, window, noise_levels, params, device, chunk_size, progress_bar,
                n_jobs=job_kwargs["n_jobs"], timer=timer, window_traces=window_traces,
            )
        del window_traces  # not held through inference
        with timer("inference"):
            detected = detect_in_recording(
                model, preprocessed, chunk_size, progress_bar, stride=params["inference_stride"]
            )
        timer.seconds.update({f"inference_{k}": v for k, v in detected.timings.items()})

        sorting = make_sorting(detected, annotations.unit_ids, fs, recording.get_num_segments())
        set_unit_properties(sorting, detected, annotations, split, model.validation, params["annotated_spikes_per_unit"])
        logger.info("sorting: %d spikes of %d units", len(detected.sample_index), len(annotations.unit_ids))
        model.save(folder / "model")
        np.save(folder / "spike_probabilities.npy", detected.probability)
        (folder / "validation.json").write_text(json.dumps(model.validation, indent=2, default=json_default), encoding="utf8")
        (folder / "timings.json").write_text(json.dumps(timer.seconds, indent=2), encoding="utf8")
        check_spike_counts(detected, annotations.unit_ids, model.thresholds, all_silent_is_error=True)
        summary = run_summary(timer.seconds, recording.get_total_duration())
        logger.info("%s", summary)
        if verbose:
            print(summary, flush=True)
        save_sorting(sorting, folder / "sorting")
    return sorting
