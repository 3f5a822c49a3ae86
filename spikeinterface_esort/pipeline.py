"""``run_esort``: the whole E-Sort pipeline, one step per module.

recording -> preprocessing -> annotation -> training -> validation (thresholds)
-> inference + post-processing -> sorting. Everything it writes goes to
``sorter_output`` (see ``docs/`` for the layout); the log is ``esort.log`` there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, NumpySorting, select_segment_recording
from spikeinterface.core.base import minimum_spike_dtype
from spikeinterface.core.job_tools import ensure_chunk_size, fix_job_kwargs

from .annotation import Annotations, annotate, check_annotation_source, training_window
from .device import resolve_device, torch_threads
from .inference import DetectedSpikes, detect_in_recording
from .model import ESortModel
from .postprocessing import smoothing_taps
from .network import network_window_samples
from .parameters import validate_params
from .preprocessing import check_preprocessing_params, correct_motion, estimate_noise_levels, preprocess
from .training import TrainingSplit, fit_network, load_traces, split_window
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
    resolve_device(params["torch_device"])


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


def set_unit_properties(
    sorting: NumpySorting, detected: DetectedSpikes, annotations: Annotations, split: TrainingSplit, validation: dict
) -> None:
    """Per-unit summaries as sorting properties (saved with the sorting, exported to phy's cluster table):
    mean smoothed probability of the unit's spikes, annotated spikes used for training, detection
    threshold, and held-out validation accuracy, precision and recall."""
    num_units = len(sorting.unit_ids)
    counts = np.bincount(detected.unit_index, minlength=num_units)
    sums = np.bincount(detected.unit_index, weights=detected.probability, minlength=num_units)
    mean_probability = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    in_training = annotations.sample_index < split.split
    sorting.set_property("esort_mean_probability", mean_probability.astype("float32"))
    sorting.set_property(
        "esort_training_spikes", np.bincount(annotations.unit_index[in_training], minlength=num_units).astype("int64")
    )
    for key in ("threshold", "accuracy", "precision", "recall"):
        name = key if key == "threshold" else f"validation_{key}"
        sorting.set_property(f"esort_{name}", np.array([u[key] for u in validation["units"]], dtype="float32"))


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
        window_samples = network_window_samples(params["window_ms"], fs)

        with timer("preprocessing"):
            preprocessed = preprocess(recording, params)
            if params["motion_correction"] is not None:
                preprocessed = correct_motion(
                    preprocessed, params["motion_correction"], folder / "motion", dict(job_kwargs, progress_bar=progress_bar)
                )
            chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
            window = training_window(recording, params)
            split = split_window(window, params["validation_fraction"])
            noise_levels = estimate_noise_levels(
                select_segment_recording(preprocessed, 0).frame_slice(window.start_frame, window.end_frame),
                seed=params["seed"],
                progress_bar=progress_bar,
            )

        with timer("annotation"):
            annotations = annotate(recording, window, params, folder, verbose)

        with timer("training"):
            traces = load_traces(
                preprocessed, window.start_frame, window.end_frame, noise_levels,
                chunk_size=chunk_size, progress_bar=progress_bar,
            )
            jitter = int(round(params["jitter_ms"] * fs / 1000.0))
            network, history = fit_network(
                traces, annotations, split, window_samples, jitter, params, device, progress_bar,
                channel_locations=preprocessed.get_channel_locations(),
            )
            del traces
            model = ESortModel(
                network, fs, preprocessed.channel_ids, preprocessed.get_channel_locations(), noise_levels,
                annotations.unit_ids, smoothing_taps(params["smoothing_ms"], fs),
                preprocessing={
                    k: params[k]
                    for k in ("apply_preprocessing", "freq_min", "freq_max", "common_reference", "motion_correction")
                },
            )

        with timer("validation"):
            validation = choose_thresholds(
                model, preprocessed, annotations, (split.split, split.stop), params, chunk_size, progress_bar
            )
            validation["training_history"] = history
            model.validation = validation

        with timer("inference"):
            detected = detect_in_recording(
                model, preprocessed, chunk_size, progress_bar, stride=params["inference_stride"]
            )
        timer.seconds.update({f"inference_{k}": v for k, v in detected.timings.items()})

        sorting = make_sorting(detected, annotations.unit_ids, fs, recording.get_num_segments())
        set_unit_properties(sorting, detected, annotations, split, validation)
        logger.info("sorting: %d spikes of %d units", len(detected.sample_index), len(annotations.unit_ids))
        model.save(folder / "model")
        np.save(folder / "spike_probabilities.npy", detected.probability)
        (folder / "validation.json").write_text(json.dumps(validation, indent=2, default=_json_default), encoding="utf8")
        (folder / "timings.json").write_text(json.dumps(timer.seconds, indent=2), encoding="utf8")
        # written under another name, then renamed: a crash never leaves a sorting that loads as complete
        partial = folder / "sorting.partial"
        sorting.save(folder=partial, overwrite=True)
        partial.rename(folder / "sorting")
    return sorting


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
