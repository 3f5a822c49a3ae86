"""Self-training: the trained network relabels the training part of the window, and is trained again.

The network sorts the training part of the window (not its held-out part, whose teacher labels still choose the
thresholds). For each unit, a detection at or above its threshold (chosen on the held-out part) and at least
``SELF_TRAINING_MIN_PROBABILITY``, with no annotated spike of the unit within the matching tolerance becomes a positive (a spike the teacher missed, for
example in an overlap); an annotated spike with no detection of its unit within the tolerance (probability under
``validation.CANDIDATE_FLOOR``) becomes uncertain: neither a positive nor a negative in the next training.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from spikeinterface.core import BaseRecording

from .annotation import Annotations
from .training import TrainingSplit
from .validation import detect_candidates, nearest_index

if TYPE_CHECKING:
    from .model import ESortModel

logger = logging.getLogger("spikeinterface_esort")

SELF_TRAINING_MIN_PROBABILITY = 0.5


def _within(samples: np.ndarray, reference: np.ndarray, tolerance: int) -> np.ndarray:
    """True where a ``samples`` time has a ``reference`` time (sorted) within ``tolerance`` samples."""
    if len(reference) == 0 or len(samples) == 0:
        return np.zeros(len(samples), dtype=bool)
    return np.abs(reference[nearest_index(reference, samples)] - samples) <= tolerance


def relabel(model: "ESortModel", training_recording: BaseRecording, annotations: Annotations, split: TrainingSplit,
            params: dict, chunk_size: int, progress_bar: bool) -> tuple[Annotations, dict]:
    """The annotations with the network's confident detections added and the spikes it rejects made uncertain,
    on the training part ``[split.start, split.split)`` only; and counts per unit (added, made uncertain)."""
    detected, tolerance = detect_candidates(model, training_recording, annotations.num_units,
                                            (split.start, split.split), params, chunk_size, progress_bar)
    in_part = (annotations.sample_index >= split.start) & (annotations.sample_index < split.split)
    uncertain = ~annotations.certain
    added_samples, added_units, report = [], [], []
    for u, unit_id in enumerate(annotations.unit_ids):
        mine = detected.unit_index == u
        samples, values = detected.sample_index[mine], detected.probability[mine]
        annotated = annotations.sample_index[annotations.unit_index == u]  # uncertain too: not added again
        floor = max(float(model.thresholds[u]), SELF_TRAINING_MIN_PROBABILITY)
        new = (values >= floor) & ~_within(samples, annotated, tolerance)
        added_samples.append(samples[new])
        added_units.append(np.full(int(new.sum()), u, dtype=np.int64))
        teacher = np.flatnonzero(in_part & (annotations.unit_index == u) & annotations.certain)
        rejected = teacher[~_within(annotations.sample_index[teacher], samples, tolerance)]
        uncertain[rejected] = True
        report.append(dict(unit_id=unit_id.item() if hasattr(unit_id, "item") else unit_id, added=int(new.sum()),
                           made_uncertain=int(len(rejected))))
    sample_index = np.concatenate([annotations.sample_index, *added_samples])
    unit_index = np.concatenate([annotations.unit_index, *added_units])
    uncertain = np.concatenate([uncertain, np.zeros(len(sample_index) - len(uncertain), dtype=bool)])
    order = np.argsort(sample_index, kind="stable")
    relabelled = Annotations(sample_index[order], unit_index[order], annotations.unit_ids,
                             annotations.source + " + self-training", uncertain[order])
    added, made_uncertain = sum(r["added"] for r in report), sum(r["made_uncertain"] for r in report)
    logger.info(
        "self-training: the network added %d spikes the annotations missed (at or above its thresholds, at least "
        "%g) and left out %d "
        "annotated spikes it rejects, on %.1f s of the training window; per unit (id, added, left out): %s",
        added, SELF_TRAINING_MIN_PROBABILITY, made_uncertain,
        (split.split - split.start) / training_recording.get_sampling_frequency(),
        ", ".join(f"({r['unit_id']}, {r['added']}, {r['made_uncertain']})" for r in report if r["added"] or r["made_uncertain"]),
    )
    return relabelled, dict(added=added, made_uncertain=made_uncertain, units=report)
