"""``run_esort``: the whole E-Sort pipeline, one step per module.

recording -> preprocessing -> annotation -> training -> validation (thresholds)
-> inference + post-processing -> sorting. Everything it writes goes to
``sorter_output`` (see ``docs/`` for the layout); the log is ``esort.log`` there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from spikeinterface.core import BaseRecording, NumpySorting
from spikeinterface.core.base import minimum_spike_dtype
from spikeinterface.core.job_tools import ensure_chunk_size, fix_job_kwargs

from .annotation import (
    Annotations,
    TrainingWindow,
    annotate,
    check_annotation_source,
    check_sorting_matches,
    checked_annotations,
    load_annotation_sorting,
    sorting_to_annotations,
    training_window,
)
from .device import resolve_device, resolve_dtype, torch_threads
from .inference import DetectedSpikes, detect_in_recording
from .model import ESortModel
from .postprocessing import smoothing_taps
from .network import network_window_samples
from .parameters import PARAMETERS_BY_NAME, default_params, validate_params
from .preprocessing import check_preprocessing_params, correct_motion, estimate_noise_levels, preprocess
from .training import TrainingSplit, fit_network, load_traces, split_window
from .transfer import Backbone, model_backbone, resolve_backbone
from .validation import choose_thresholds

logger = logging.getLogger("spikeinterface_esort")

LOG_FILE_NAME = "esort.log"


def check_inputs(recording: BaseRecording, params: dict) -> None:
    """Every check that can fail before long work starts; each raises ``ValueError`` naming the
    parameter or recording property to fix."""
    validate_params(params)
    check_preprocessing_params(recording, params)
    network_window_samples(params["window_ms"], recording.get_sampling_frequency())
    training_window(recording, params)
    check_annotation_source(recording, params)
    resolve_precision(params, resolve_device(params["torch_device"]))
    resolve_backbone(params["pretrained_weights"], recording.get_channel_locations(), recording.get_sampling_frequency())


def resolve_precision(params: dict, device: torch.device) -> dict:
    """``params`` with ``training_dtype`` and ``inference_dtype`` as used on ``device`` ('auto' resolved; see
    ``device.resolve_dtype``, which refuses emulated bfloat16 and float16 off a GPU)."""
    return dict(params, **{name: resolve_dtype(name, params[name], device) for name in ("training_dtype", "inference_dtype")})


def chunk_size_from_job_kwargs(recording: BaseRecording, job_kwargs: dict) -> int:
    """Chunk size in samples from chunk_size, chunk_memory, total_memory or chunk_duration, as SpikeInterface reads them."""
    keys = ("chunk_size", "chunk_memory", "total_memory", "chunk_duration", "n_jobs")
    return int(ensure_chunk_size(recording, **{k: job_kwargs[k] for k in keys if k in job_kwargs}))


def resolve_job_kwargs(job_kwargs: dict) -> dict:
    """SpikeInterface job kwargs; n_jobs defaults to every core (not SpikeInterface's global 1)."""
    job_kwargs = dict(job_kwargs)
    job_kwargs.setdefault("n_jobs", -1)
    return fix_job_kwargs(job_kwargs)


@contextlib.contextmanager
def file_log(folder: Path):
    """Send this package's log records to ``folder / esort.log`` inside the block."""
    handler = logging.FileHandler(folder / LOG_FILE_NAME, encoding="utf8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    except Exception:
        logger.exception("esort failed")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


STEP_NAMES = {  # timings.json key -> what the step is, in a user's words
    "preprocessing": "preparing the recording (filter, noise levels)",
    "annotation": "annotating the training window",
    "training": "training the network",
    "validation": "choosing thresholds on held-out annotations",
    "inference": "sorting the whole recording",
}


def run_summary(seconds: dict, recording_s: float) -> str:
    """The end-of-run summary: total wall time, each step's in words (``STEP_NAMES``), and how many times faster
    than real time the whole recording was sorted. ``seconds``: ``StepTimer.seconds`` (as saved in timings.json)."""
    total = sum(seconds.get(step, 0.0) for step in STEP_NAMES)
    lines = [f"esort sorted {recording_s:.1f} s of recording in {total:.1f} s:"]
    for step, words in STEP_NAMES.items():
        if step in seconds:
            lines.append(f"  {words:<48s} {seconds[step]:8.1f} s")
    if seconds.get("inference", 0.0) > 0:
        lines.append(f"  the sort ran at {recording_s / seconds['inference']:.1f}x real time")
    return "\n".join(lines)


class StepTimer:
    """Wall time of each named pipeline step, logged as it ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        logger.info("%s: start", name)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        logger.info("%s: done in %.2f s", name, self.seconds[name])


def make_sorting(detected: DetectedSpikes, unit_ids: np.ndarray, sampling_frequency: float, num_segments: int) -> NumpySorting:
    """A NumpySorting with one segment per recording segment, even where a segment has no spike."""
    from spikeinterface.core.numpyextractors import SpikeVectorSortingSegment

    spikes = np.zeros(len(detected.sample_index), dtype=minimum_spike_dtype)
    spikes["sample_index"] = detected.sample_index
    spikes["unit_index"] = detected.unit_index
    spikes["segment_index"] = detected.segment_index
    sorting = NumpySorting(spikes, sampling_frequency, unit_ids)
    for segment_index in range(sorting.get_num_segments(), num_segments):
        sorting.add_sorting_segment(SpikeVectorSortingSegment(spikes, segment_index, unit_ids))
    return sorting


UNIT_PROPERTIES = (
    "esort_mean_probability",
    "esort_training_spikes",
    "esort_threshold",
    "esort_validation_accuracy",
    "esort_validation_precision",
    "esort_validation_recall",
)


def mean_probabilities(detected: DetectedSpikes, num_units: int) -> np.ndarray:
    """Mean smoothed probability of each unit's spikes (NaN for a unit without spikes), float32."""
    counts = np.bincount(detected.unit_index, minlength=num_units)
    sums = np.bincount(detected.unit_index, weights=detected.probability, minlength=num_units)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype("float32")


def set_unit_properties(
    sorting: NumpySorting, detected: DetectedSpikes, annotations: Annotations, split: TrainingSplit, validation: dict,
    k: int | None = None,
) -> None:
    """Per-unit summaries as sorting properties (saved with the sorting, exported to phy's cluster table):
    mean smoothed probability of the unit's spikes, annotated spikes used for training (at most ``k`` each
    in few-shot training), detection
    threshold, and held-out validation accuracy, precision and recall."""
    num_units = len(sorting.unit_ids)
    in_training = annotations.sample_index < split.split
    sorting.set_property("esort_mean_probability", mean_probabilities(detected, num_units))
    training_spikes = np.bincount(annotations.unit_index[in_training], minlength=num_units)
    if k is not None:
        training_spikes = np.minimum(training_spikes, k)
    sorting.set_property("esort_training_spikes", training_spikes.astype("int64"))
    for key in ("threshold", "accuracy", "precision", "recall"):
        name = key if key == "threshold" else f"validation_{key}"
        sorting.set_property(f"esort_{name}", np.array([u[key] for u in validation["units"]], dtype="float32"))


def check_spike_counts(detected: DetectedSpikes, unit_ids: np.ndarray, thresholds: np.ndarray, all_silent_is_error: bool) -> None:
    """Warn (log and ``UserWarning``) naming the units the sort gave no spike; with ``all_silent_is_error``, raise
    ``RuntimeError`` when no unit has a spike (a run trained on annotated spikes that finds none has failed)."""
    counts = np.bincount(detected.unit_index, minlength=len(unit_ids))
    silent = [unit_ids[i] for i in np.flatnonzero(counts == 0)]
    if not silent:
        return
    names = ", ".join(str(u) for u in silent[:20]) + (f" and {len(silent) - 20} more" if len(silent) > 20 else "")
    thresholds_text = ", ".join(f"{t:.2f}" for t in np.asarray(thresholds)[counts == 0][:5])
    message = (f"esort found no spike for {len(silent)} of {len(unit_ids)} units ({names}); their detection "
               f"thresholds: {thresholds_text}{', ...' if len(silent) > 5 else ''}. Check validation.json and esort.log: "
               "too few annotated spikes, a teacher unit that is noise, or a pretrained backbone that does not fit.")
    if all_silent_is_error and len(silent) == len(unit_ids):
        logger.error("%s", message)
        raise RuntimeError(message + " The model and validation.json are saved in the sorter folder.")
    logger.warning("%s", message)
    warnings.warn(message, stacklevel=2)


MODEL_PARAMS_EXCLUDED = ("job_kwargs", "annotation_sorting_path", "annotation_sorter_params")


def fit_model(
    preprocessed: BaseRecording,
    annotations: Annotations,
    window: TrainingWindow,
    noise_levels: np.ndarray,
    params: dict,
    device,
    chunk_size: int,
    progress_bar: bool,
    timer: "StepTimer | None" = None,
    backbone: Backbone | None = None,
) -> tuple[ESortModel, TrainingSplit]:
    """Train a network on the annotated training window of a preprocessed recording (from
    ``backbone``, else from ``pretrained_weights`` when given) and choose its thresholds on the held-out part:
    the model and the split (in the window's training-recording frames, like ``annotations``)."""
    timer = timer or StepTimer()
    requested, params = params, resolve_precision(params, device)
    for name in ("training_dtype", "inference_dtype"):
        if params[name] != requested[name]:
            logger.info("%s: %s -> %s on %s", name, requested[name], params[name], device)
    fs = preprocessed.get_sampling_frequency()
    locations = preprocessed.get_channel_locations()
    split = split_window(window)
    training_recording = window.training_recording(preprocessed)
    with timer("training"):
        if backbone is None:
            backbone = resolve_backbone(params["pretrained_weights"], locations, fs)
        traces = load_traces(
            training_recording, 0, window.num_samples, noise_levels, chunk_size=chunk_size, progress_bar=progress_bar,
            n_jobs=torch.get_num_threads(),  # the job's n_jobs (see torch_threads)
        )
        jitter = int(round(params["jitter_ms"] * fs / 1000.0))
        network, history = fit_network(
            traces, annotations, split, network_window_samples(params["window_ms"], fs), jitter, params, device,
            progress_bar, channel_locations=locations, backbone=backbone, sampling_frequency=fs,
        )
        del traces
        model = ESortModel(
            network, fs, preprocessed.channel_ids, locations, noise_levels, annotations.unit_ids,
            smoothing_taps(params["smoothing_ms"], fs),
            preprocessing={
                k: params[k]
                for k in ("apply_preprocessing", "freq_min", "freq_max", "common_reference", "filter_method", "motion_correction")
            },
            params={k: v for k, v in params.items() if k not in MODEL_PARAMS_EXCLUDED},
        )
    with timer("validation"):
        if params["annotated_spikes_per_unit"] is not None:
            logger.info("validation: few-shot training holds no annotation out; thresholds are not chosen on data")
        validation = choose_thresholds(
            model, training_recording, annotations, (split.split, split.stop), params, chunk_size, progress_bar
        )
        parts = [[int(a), int(b)] for a, b in window.validation_parts()]  # frames of segment 0, not of the window
        validation["frame_ranges"] = parts
        validation["frame_range"] = parts[0] if len(parts) == 1 else None
        validation["training_history"] = history
        model.validation = validation
    return model, split


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

        model, split = fit_model(
            preprocessed, annotations, window, noise_levels, params, device, chunk_size, progress_bar, timer
        )
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
        (folder / "validation.json").write_text(json.dumps(model.validation, indent=2, default=_json_default), encoding="utf8")
        (folder / "timings.json").write_text(json.dumps(timer.seconds, indent=2), encoding="utf8")
        check_spike_counts(detected, annotations.unit_ids, model.thresholds, all_silent_is_error=True)
        summary = run_summary(timer.seconds, recording.get_total_duration())
        logger.info("%s", summary)
        if verbose:
            print(summary, flush=True)
        save_sorting(sorting, folder / "sorting")
    return sorting


def save_sorting(sorting: NumpySorting, folder: Path) -> None:
    """Save ``sorting`` to ``folder`` under another name first, then rename it: a crash never leaves a sorting that
    loads as complete. SpikeInterface's warning that an in-memory sorting has no provenance to save is not shown
    (the sorting itself is saved whole)."""
    partial = folder.with_name(folder.name + ".partial")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The extractor is not serializable to file")
        sorting.save(folder=partial, overwrite=True)
    partial.rename(folder)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _preprocess_like_model(model: ESortModel, recording: BaseRecording, folder: Path | None, job_kwargs: dict,
                           progress_bar: bool) -> BaseRecording:
    """The preprocessing the model was trained with, applied to another recording of the same probe."""
    preprocessed = preprocess(recording, model.preprocessing)
    if model.preprocessing.get("motion_correction") is not None:
        import tempfile

        motion_folder = Path(folder) / "motion" if folder is not None else Path(tempfile.mkdtemp(prefix="esort_motion_"))
        preprocessed = correct_motion(
            preprocessed, model.preprocessing["motion_correction"], motion_folder, dict(job_kwargs, progress_bar=progress_bar)
        )
    return preprocessed


def _optional_file_log(folder: Path | None):
    if folder is None:
        return contextlib.nullcontext()
    folder.mkdir(parents=True, exist_ok=True)
    return file_log(folder)


def sort_with_model(
    model: ESortModel,
    recording: BaseRecording,
    folder: str | Path | None = None,
    job_kwargs: dict | None = None,
    stride: int | None = None,
    verbose: bool = False,
    inference_dtype: str | None = None,
) -> NumpySorting:
    """Sort ``recording`` with a trained model (see ``ESortModel.sort``)."""
    model.check_recording(recording)
    if inference_dtype is not None:  # a copy of the model's parameters: the model itself is left as it was
        PARAMETERS_BY_NAME["inference_dtype"].check(inference_dtype)
        inference_dtype = resolve_dtype("inference_dtype", inference_dtype, model.device)
        model = copy.copy(model)
        model.params = dict(model.params, inference_dtype=inference_dtype)  # the folded network follows it
    folder = None if folder is None else Path(folder)
    job_kwargs = resolve_job_kwargs(job_kwargs or {})
    progress_bar = bool(job_kwargs.get("progress_bar", True)) and verbose
    stride = int(stride or model.params.get("inference_stride", 1))
    with _optional_file_log(folder), torch_threads(job_kwargs["n_jobs"]):
        logger.info("sort with a saved model: %d units, %d channels, stride %d", len(model.unit_ids),
                    recording.get_num_channels(), stride)
        preprocessed = _preprocess_like_model(model, recording, folder, job_kwargs, progress_bar)
        chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
        detected = detect_in_recording(model, preprocessed, chunk_size, progress_bar, stride=stride)
        sorting = make_sorting(detected, model.unit_ids, model.sampling_frequency, recording.get_num_segments())
        sorting.set_property("esort_mean_probability", mean_probabilities(detected, len(model.unit_ids)))
        sorting.set_property("esort_threshold", model.thresholds.astype("float32"))
        logger.info("sorting: %d spikes of %d units", len(detected.sample_index), len(model.unit_ids))
        check_spike_counts(detected, model.unit_ids, model.thresholds, all_silent_is_error=False)
        if folder is not None:
            np.save(folder / "spike_probabilities.npy", detected.probability)
            save_sorting(sorting, folder / "sorting")
    return sorting


def fine_tune_model(
    model: ESortModel,
    recording: BaseRecording,
    annotations,
    folder: str | Path | None = None,
    verbose: bool = False,
    **overrides,
) -> ESortModel:
    """Train a new model on ``annotations`` of ``recording`` from ``model``'s backbone (see ``ESortModel.fine_tune``)."""
    from spikeinterface.core import BaseSorting

    params = default_params()
    params.update({k: v for k, v in model.params.items() if k in PARAMETERS_BY_NAME})
    params.update(overrides)
    validate_params(params)
    model.check_recording(recording)
    sorting = annotations if isinstance(annotations, BaseSorting) else load_annotation_sorting(annotations)
    source = "the fine-tuning annotations" if isinstance(annotations, BaseSorting) else f"sorting folder {annotations}"
    check_sorting_matches(sorting, recording, source)
    window = training_window(recording, params)
    folder = None if folder is None else Path(folder)
    job_kwargs = resolve_job_kwargs(params["job_kwargs"])
    progress_bar = bool(job_kwargs.get("progress_bar", True)) and verbose
    with _optional_file_log(folder), torch_threads(job_kwargs["n_jobs"]):
        found = checked_annotations(sorting_to_annotations(sorting, window, source), window, params)
        preprocessed = _preprocess_like_model(model, recording, folder, job_kwargs, progress_bar)
        chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
        backbone = model_backbone(model)
        params["window_ms"] = model.window_samples * 1000.0 / model.sampling_frequency
        tuned, _ = fit_model(
            preprocessed, found, window, model.noise_levels, params, resolve_device(params["torch_device"]),
            chunk_size, progress_bar, backbone=backbone,
        )
        tuned.preprocessing = dict(model.preprocessing)
        if folder is not None:
            tuned.save(folder / "model")
    return tuned
