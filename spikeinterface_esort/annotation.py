"""Annotation: labelled spikes in the training window.

The training window is ``[train_start_s, train_start_s + train_duration_s)`` of the
first segment. Annotations come from a saved SpikeInterface sorting
(``annotation_sorting_path``: curated sorting or ground truth) or, failing that,
from a SpikeInterface sorter run on the window through ``run_sorter``
(``annotation_sorter``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, BaseSorting

logger = logging.getLogger("spikeinterface_esort")

MAX_DEFAULT_TRAIN_DURATION_S = 60.0


@dataclass
class TrainingWindow:
    """Samples ``[start_frame, end_frame)`` of segment 0."""

    start_frame: int
    end_frame: int

    @property
    def num_samples(self) -> int:
        return self.end_frame - self.start_frame


@dataclass
class Annotations:
    """Annotated spikes in the training window: sample indices (in segment 0, absolute) and unit
    indices into ``unit_ids``, sorted by time."""

    sample_index: np.ndarray
    unit_index: np.ndarray
    unit_ids: np.ndarray
    source: str

    @property
    def num_units(self) -> int:
        return len(self.unit_ids)

    def spike_counts(self) -> np.ndarray:
        return np.bincount(self.unit_index, minlength=self.num_units)


def default_train_duration_s(segment_s: float) -> float:
    """The training window's length (s) when ``train_duration_s`` is None: the first half of a first segment of
    ``segment_s`` seconds, at most ``MAX_DEFAULT_TRAIN_DURATION_S``."""
    return min(segment_s / 2.0, MAX_DEFAULT_TRAIN_DURATION_S)


def training_window(recording: BaseRecording, params: dict) -> TrainingWindow:
    """The training window in frames, checked against the first segment."""
    fs = recording.get_sampling_frequency()
    num_samples = recording.get_num_samples(segment_index=0)
    segment_s = num_samples / fs
    start_s = float(params["train_start_s"])
    duration_s = params["train_duration_s"]
    if duration_s is None:
        duration_s = default_train_duration_s(segment_s)
    if start_s >= segment_s:
        raise ValueError(
            f"esort parameter 'train_start_s'={start_s} s is outside the first segment ({segment_s:.3f} s long)."
        )
    end_s = start_s + float(duration_s)
    if end_s > segment_s + 1e-9:
        raise ValueError(
            f"The training window {start_s}-{end_s} s (train_start_s + train_duration_s) is longer than the "
            f"first segment of the recording ({segment_s:.3f} s); shorten 'train_duration_s'."
        )
    window = TrainingWindow(int(round(start_s * fs)), min(int(round(end_s * fs)), num_samples))
    if window.num_samples <= 0:
        raise ValueError(f"esort: the training window {start_s}-{end_s} s is empty.")
    return window


def load_annotation_sorting(path: str | Path) -> BaseSorting:
    """A sorting from a folder saved by ``sorting.save`` or written by ``run_sorter``."""
    from spikeinterface.core import load
    from spikeinterface.sorters import read_sorter_folder

    path = Path(path)
    if not path.exists():
        raise ValueError(f"esort parameter 'annotation_sorting_path': {path} does not exist.")
    if (path / "spikeinterface_log.json").is_file():
        return read_sorter_folder(path, register_recording=False)
    try:
        sorting = load(path)
    except Exception as err:  # SpikeInterface raises various errors for unreadable folders
        raise ValueError(
            f"esort parameter 'annotation_sorting_path': {path} is not a SpikeInterface sorting folder ({err})."
        ) from err
    if not isinstance(sorting, BaseSorting):
        raise ValueError(
            f"esort parameter 'annotation_sorting_path': {path} holds a {type(sorting).__name__}, not a sorting."
        )
    return sorting


def check_sorting_matches(sorting: BaseSorting, recording: BaseRecording, what: str) -> None:
    """Raise ``ValueError`` when the sorting's sampling rate or segment count differs from the recording's."""
    fs_rec, fs_sort = recording.get_sampling_frequency(), sorting.get_sampling_frequency()
    if abs(fs_rec - fs_sort) > 1e-6 * fs_rec:
        raise ValueError(f"{what}: sampling frequency {fs_sort} Hz does not match the recording's {fs_rec} Hz.")
    if sorting.get_num_segments() != recording.get_num_segments():
        raise ValueError(
            f"{what}: {sorting.get_num_segments()} segment(s), but the recording has "
            f"{recording.get_num_segments()}."
        )


def sorting_to_annotations(sorting: BaseSorting, window: TrainingWindow, offset: int, source: str) -> Annotations:
    """Spikes of segment 0 of ``sorting`` (shifted by ``offset`` frames) that fall in ``window``."""
    spikes = sorting.to_spike_vector()
    spikes = spikes[spikes["segment_index"] == 0]
    sample_index = spikes["sample_index"].astype(np.int64) + offset
    keep = (sample_index >= window.start_frame) & (sample_index < window.end_frame)
    order = np.argsort(sample_index[keep], kind="stable")
    return Annotations(
        sample_index=sample_index[keep][order],
        unit_index=spikes["unit_index"][keep][order].astype(np.int64),
        unit_ids=np.asarray(sorting.unit_ids),
        source=source,
    )


def check_annotation_source(recording: BaseRecording, params: dict) -> None:
    """Raise ``ValueError`` when the annotation sorting folder is unreadable or does not fit the recording,
    or when the annotation sorter is not installed."""
    from spikeinterface.sorters import installed_sorters

    path = params["annotation_sorting_path"]
    if path is not None:
        check_sorting_matches(load_annotation_sorting(path), recording, f"annotation sorting {path}")
        return
    name = params["annotation_sorter"]
    if name == "esort":
        raise ValueError("esort parameter 'annotation_sorter' cannot be 'esort' itself.")
    if name not in installed_sorters():
        raise ValueError(
            f"esort parameter 'annotation_sorter'={name!r} is not installed here; installed sorters: "
            f"{installed_sorters()}. Install it, choose another, or give 'annotation_sorting_path'."
        )


def run_annotation_sorter(
    recording: BaseRecording, window: TrainingWindow, params: dict, folder: Path, verbose: bool
) -> BaseSorting:
    """Run ``annotation_sorter`` on the training window of segment 0 with ``run_sorter``."""
    from spikeinterface.core import select_segment_recording
    from spikeinterface.sorters import run_sorter

    name = params["annotation_sorter"]
    window_recording = select_segment_recording(recording, 0).frame_slice(window.start_frame, window.end_frame)
    logger.info("annotation: running %s on %.1f s of segment 0", name, window.num_samples / recording.sampling_frequency)
    try:
        return run_sorter(
            name, window_recording, folder=folder, remove_existing_folder=True, verbose=verbose,
            **params["annotation_sorter_params"],
        )
    except Exception as err:
        raise RuntimeError(
            f"esort: the annotation sorter {name!r} failed on the training window ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}). Its log is in {folder}; fix its "
            "'annotation_sorter_params', choose another 'annotation_sorter', or give 'annotation_sorting_path'."
        ) from err


def drop_small_units(annotations: Annotations, min_spikes: int) -> Annotations:
    """Remove units with fewer than ``min_spikes`` annotated spikes; log which."""
    counts = annotations.spike_counts()
    keep_units = np.flatnonzero(counts >= min_spikes)
    dropped = [(annotations.unit_ids[u], int(counts[u])) for u in np.flatnonzero(counts < min_spikes)]
    if dropped:
        logger.info(
            "annotation: dropped %d unit(s) with fewer than %d spikes (unit id, spikes): %s",
            len(dropped), min_spikes, ", ".join(f"({uid}, {n})" for uid, n in dropped),
        )
    remap = np.full(annotations.num_units, -1, dtype=np.int64)
    remap[keep_units] = np.arange(len(keep_units))
    keep = remap[annotations.unit_index] >= 0
    return Annotations(
        sample_index=annotations.sample_index[keep],
        unit_index=remap[annotations.unit_index[keep]],
        unit_ids=annotations.unit_ids[keep_units],
        source=annotations.source,
    )


def annotate(
    recording: BaseRecording, window: TrainingWindow, params: dict, folder: Path, verbose: bool = False
) -> Annotations:
    """Annotated spikes of the training window, from ``annotation_sorting_path`` or ``annotation_sorter``."""
    if params["annotation_sorting_path"] is not None:
        path = params["annotation_sorting_path"]
        sorting = load_annotation_sorting(path)
        check_sorting_matches(sorting, recording, f"annotation sorting {path}")
        annotations = sorting_to_annotations(sorting, window, offset=0, source=f"sorting folder {path}")
    else:
        sorting = run_annotation_sorter(recording, window, params, Path(folder) / "annotation_sorter", verbose)
        annotations = sorting_to_annotations(
            sorting, window, offset=window.start_frame, source=f"sorter {params['annotation_sorter']}"
        )
    return checked_annotations(annotations, window, params)


def checked_annotations(annotations: Annotations, window: TrainingWindow, params: dict) -> Annotations:
    """``annotations`` without units under ``min_spikes_per_unit``; raises ``ValueError`` when nothing is left."""
    logger.info(
        "annotation: %d spikes of %d units from %s", len(annotations.sample_index), annotations.num_units,
        annotations.source,
    )
    if len(annotations.sample_index) == 0:
        raise ValueError(
            f"esort: the annotations ({annotations.source}) have no spike in the training window "
            f"(frames {window.start_frame}-{window.end_frame} of segment 0); check train_start_s/train_duration_s."
        )
    annotations = drop_small_units(annotations, params["min_spikes_per_unit"])
    if annotations.num_units == 0:
        raise ValueError(
            f"esort: no annotated unit has at least min_spikes_per_unit={params['min_spikes_per_unit']} spikes "
            "in the training window; lengthen the window or lower min_spikes_per_unit."
        )
    return annotations
