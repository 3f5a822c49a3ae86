"""The sort's output: the sorting, esort's unit properties, checks on it, and saving it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from spikeinterface.core import NumpySorting
from spikeinterface.core.base import minimum_spike_dtype

from .inference import DetectedSpikes

if TYPE_CHECKING:
    from .annotation import Annotations, TrainingWindow
    from .training import TrainingSplit

logger = logging.getLogger("spikeinterface_esort")


UNIT_PROPERTIES = (
    "esort_mean_probability",
    "esort_training_spikes",
    "esort_threshold",
    "esort_validation_accuracy",
    "esort_validation_precision",
    "esort_validation_recall",
)


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


def save_sorting(sorting: NumpySorting, folder: Path) -> None:
    """Save ``sorting`` to ``folder`` under another name first, then rename it: a crash never leaves a sorting that
    loads as complete. SpikeInterface's warning that an in-memory sorting has no provenance to save is not shown
    (the sorting itself is saved whole)."""
    partial = folder.with_name(folder.name + ".partial")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The extractor is not serializable to file")
        sorting.save(folder=partial, overwrite=True)
    partial.rename(folder)


def save_training_annotations(annotations: "Annotations", window: "TrainingWindow", sampling_frequency: float,
                              folder: Path) -> None:
    """Save the annotated spikes the network trains on (after curation; a teacher ensemble's uncertain spikes left
    out) as a SpikeInterface sorting in the recording's time base (segment 0), every annotated unit listed: what
    ``annotation_sorting_path`` reads back."""
    keep, frames = window.from_training_frames(annotations.sample_index[annotations.certain])
    units = annotations.unit_index[annotations.certain][keep]
    order = np.argsort(frames, kind="stable")
    sorting = NumpySorting.from_samples_and_labels([frames[order]], [annotations.unit_ids[units[order]]],
                                                   sampling_frequency, unit_ids=annotations.unit_ids)
    save_sorting(sorting, folder)


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
