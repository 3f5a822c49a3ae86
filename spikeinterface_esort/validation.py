"""Validation: detection thresholds and scores from the held-out annotated data.

The model runs, exactly as it will on the whole recording, over the held-out part of
the training window. Every smoothed local maximum is a candidate; candidates are
matched to the annotated spikes of their unit within ``match_tolerance_ms``, and each
unit's threshold is the one that maximises its accuracy TP / (TP + FP + FN) there.
The data being sorted is never used to choose a threshold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from spikeinterface.core import BaseRecording

from .annotation import Annotations
from .inference import detect_in_recording

if TYPE_CHECKING:
    from .model import ESortModel

logger = logging.getLogger("spikeinterface_esort")

DEFAULT_THRESHOLD = 0.5
CANDIDATE_FLOOR = 0.02
MIN_VALIDATION_SPIKES = 3
VALLEY_SEARCH_FLOOR = 0.1  # few-shot: the valley is searched between this probability and the shots' median
VALLEY_BINS = 50


def nearest_index(reference: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the nearest ``reference`` time (sorted, non-empty) for each of ``times``."""
    after = np.searchsorted(reference, times)
    left, right = np.clip(after - 1, 0, len(reference) - 1), np.clip(after, 0, len(reference) - 1)
    return np.where(np.abs(reference[left] - times) <= np.abs(reference[right] - times), left, right)


def match_candidates(candidates: np.ndarray, values: np.ndarray, annotated: np.ndarray, tolerance: int) -> np.ndarray:
    """For candidate times (sorted) with probabilities ``values``, True where the candidate is the most
    probable candidate within ``tolerance`` samples of its nearest annotated spike (sorted times)."""
    if len(annotated) == 0 or len(candidates) == 0:
        return np.zeros(len(candidates), dtype=bool)
    nearest = nearest_index(annotated, candidates)
    close = np.abs(annotated[nearest] - candidates) <= tolerance
    matched = np.zeros(len(candidates), dtype=bool)
    order = np.argsort(-values, kind="stable")
    taken = np.zeros(len(annotated), dtype=bool)
    for i in order[close[order]]:
        if not taken[nearest[i]]:
            taken[nearest[i]] = True
            matched[i] = True
    return matched


def best_threshold(values: np.ndarray, matched: np.ndarray, num_annotated: int, floor: float = CANDIDATE_FLOOR) -> float:
    """Threshold maximising accuracy TP / (TP + FP + FN) over candidate probabilities ``values`` (all >= ``floor``).

    The best cut keeps the k most probable candidates; the threshold is halfway between the last kept value and
    the next, the most probable rejected candidate. Where every candidate is kept, the next candidate is unseen,
    somewhere below ``floor`` (candidates are collected from there): the threshold is halfway between the last
    kept value and ``floor``, rather than just under the lowest value seen, which overfits the few held-out spikes
    (docs/method.md)."""
    order = np.argsort(-values, kind="stable")
    v, m = values[order], matched[order]
    tp = np.cumsum(m)
    fp = np.arange(1, len(v) + 1) - tp
    accuracy = tp / (tp + fp + (num_annotated - tp))
    # a cut can only fall between different values
    last_of_value = np.r_[v[1:] != v[:-1], True]
    accuracy = np.where(last_of_value, accuracy, -1.0)
    k = int(np.argmax(accuracy))
    next_value = v[k + 1] if k + 1 < len(v) else floor
    return float((v[k] + next_value) / 2)


def detect_candidates(model: ESortModel, recording: BaseRecording, num_units: int, frame_range: tuple[int, int],
                params: dict, chunk_size: int, progress_bar: bool):
    """Every smoothed local maximum at or above ``CANDIDATE_FLOOR`` on ``frame_range`` of segment 0, and the
    matching tolerance in samples."""
    tolerance = int(round(params["match_tolerance_ms"] * recording.get_sampling_frequency() / 1000.0))
    detected = detect_in_recording(
        model, recording, chunk_size, progress_bar, segment_indices=[0], frame_range=frame_range,
        thresholds=np.full(num_units, CANDIDATE_FLOOR, dtype="float32"), stride=params["inference_stride"],
    )
    return detected, tolerance


def _unit_candidates(detected, unit: int, annotated: np.ndarray, tolerance: int,
                     uncertain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of ``unit``'s candidates, and which match its ``annotated`` spikes (``match_candidates``);
    candidates that match none of them but match one of its ``uncertain`` spikes are left out."""
    mine = detected.unit_index == unit
    samples, values = detected.sample_index[mine], detected.probability[mine]
    matched = match_candidates(samples, values, annotated, tolerance)
    if uncertain is not None and len(uncertain):
        keep = matched | ~match_candidates(samples, values, uncertain, tolerance)
        values, matched = values[keep], matched[keep]
    return values, matched


def choose_thresholds(
    model: ESortModel,
    recording: BaseRecording,
    annotations: Annotations,
    frame_range: tuple[int, int],
    params: dict,
    chunk_size: int,
    progress_bar: bool,
) -> dict:
    """Set ``model.thresholds`` (``detection_threshold`` 'auto') and return the validation report:
    per unit, annotated spikes, threshold, accuracy, precision and recall on ``frame_range`` of segment 0."""
    start, stop = frame_range
    detected, tolerance = detect_candidates(model, recording, annotations.num_units, (start, stop), params, chunk_size,
                                      progress_bar)
    in_range = (annotations.sample_index >= start) & (annotations.sample_index < stop)
    fixed = params["detection_threshold"] if not isinstance(params["detection_threshold"], str) else None
    thresholds = np.full(annotations.num_units, DEFAULT_THRESHOLD if fixed is None else fixed, dtype="float32")
    report = []
    for u, unit_id in enumerate(annotations.unit_ids):
        mine = in_range & (annotations.unit_index == u)
        annotated = annotations.sample_index[mine & annotations.certain]
        values, matched = _unit_candidates(detected, u, annotated, tolerance, annotations.sample_index[mine & ~annotations.certain])
        entry = dict(unit_id=unit_id.item() if hasattr(unit_id, "item") else unit_id, validation_spikes=int(len(annotated)))
        if fixed is None and len(annotated) >= MIN_VALIDATION_SPIKES and len(values) > 0:
            thresholds[u] = best_threshold(values, matched, len(annotated))
        keep = values >= thresholds[u]
        tp, n = int(matched[keep].sum()), int(keep.sum())
        entry.update(
            threshold=float(thresholds[u]),
            accuracy=tp / (n + len(annotated) - tp) if (n + len(annotated)) else float("nan"),
            precision=tp / n if n else float("nan"),
            recall=tp / len(annotated) if len(annotated) else float("nan"),
        )
        report.append(entry)
    model.thresholds = thresholds
    accuracies = [r["accuracy"] for r in report if r["validation_spikes"] > 0]
    logger.info(
        "validation: %d units, mean accuracy %.3f on %.1f s held out (thresholds %s)",
        len(report), float(np.nanmean(accuracies)) if accuracies else float("nan"),
        (stop - start) / recording.get_sampling_frequency(),
        "chosen per unit" if fixed is None else f"fixed at {fixed}",
    )
    return dict(frame_range=[int(start), int(stop)], tolerance_samples=tolerance, units=report)


def valley_threshold(values: np.ndarray, shot_values: np.ndarray, bins: int = VALLEY_BINS,
                     low: float = VALLEY_SEARCH_FLOOR) -> float | None:
    """Few-shot threshold of one unit: the centre of the emptiest bin of a histogram of its candidate probabilities
    ``values`` (``bins`` bins over [0, 1]) between ``low`` and the median probability of its annotated shots
    ``shot_values`` (the lowest such bin on ties): the gap between the network's many weak responses to other
    events and its responses to the unit's spikes. None without shots above ``low``."""
    if len(shot_values) == 0:
        return None
    top = float(np.median(shot_values))
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    inside = np.flatnonzero((centres >= low) & (centres < top))
    if len(inside) == 0:
        return None
    return float(centres[inside[np.argmin(counts[inside])]])


def choose_few_shot_thresholds(
    model: ESortModel,
    recording: BaseRecording,
    annotations: Annotations,
    shots: np.ndarray,
    frame_range: tuple[int, int],
    params: dict,
    chunk_size: int,
    progress_bar: bool,
) -> dict:
    """Set ``model.thresholds`` after few-shot training, where no annotation is held out: each unit's
    ``valley_threshold`` of its candidate probabilities on ``frame_range`` (the training part), its shots being the
    annotated spikes where ``shots`` is True; ``DEFAULT_THRESHOLD`` for a unit none of whose shots is found. Returns
    the validation report (no held-out scores: ``validation_spikes`` 0; ``shots_found`` per unit)."""
    start, stop = frame_range
    detected, tolerance = detect_candidates(model, recording, annotations.num_units, (start, stop), params, chunk_size,
                                      progress_bar)
    thresholds = np.full(annotations.num_units, DEFAULT_THRESHOLD, dtype="float32")
    report, fallback = [], []
    for u, unit_id in enumerate(annotations.unit_ids):
        annotated = annotations.sample_index[shots & (annotations.unit_index == u)]
        values, matched = _unit_candidates(detected, u, annotated, tolerance)
        threshold = valley_threshold(values, values[matched])
        if threshold is None:
            fallback.append(unit_id)
        else:
            thresholds[u] = threshold
        report.append(dict(unit_id=unit_id.item() if hasattr(unit_id, "item") else unit_id, validation_spikes=0,
                           shots_found=int(matched.sum()), threshold=float(thresholds[u]), accuracy=float("nan"),
                           precision=float("nan"), recall=float("nan")))
    model.thresholds = thresholds
    logger.info("validation: few-shot thresholds of %d units from the valley of their probabilities on %.1f s of the "
                "training window%s", len(report), (stop - start) / recording.get_sampling_frequency(),
                f"; {len(fallback)} unit(s) at {DEFAULT_THRESHOLD} (no shot found above {VALLEY_SEARCH_FLOOR}): "
                f"{fallback}" if fallback else "")
    return dict(frame_range=[int(start), int(stop)], tolerance_samples=tolerance, units=report,
                threshold_rule="few-shot valley")
