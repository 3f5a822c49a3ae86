"""Annotation: labelled spikes in the training window.

The training window is ``train_duration_s`` seconds of the first segment, from ``train_start_s``: one
piece, or on a long segment ``train_pieces`` pieces spread evenly to the segment's end, so that the
network sees every unit wherever the probe has drifted. Annotations come from a saved SpikeInterface
sorting (``annotation_sorting_path``: curated sorting or ground truth) or, failing that, from a
SpikeInterface sorter run on the window's pieces end to end through ``run_sorter`` (``annotation_sorter``),
or several, whose agreement is the annotation (``ensemble``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, BaseSorting

from .ensemble import combine_sortings
from .jobs import resolve_job_kwargs

logger = logging.getLogger("spikeinterface_esort")

MAX_DEFAULT_TRAIN_DURATION_S = 60.0
DEFAULT_TRAIN_PIECES = 12
SPREAD_FROM_WINDOWS = 4  # train_pieces None: spread only over a segment at least this many windows long


@dataclass(frozen=True)
class TrainingWindow:
    """The training window: ``pieces``, frames ``[start, end)`` of segment 0 in time order.

    Training reads the window as one recording, the *training recording*: the first ``1 -
    validation_fraction`` of every piece end to end (the training part), then the last
    ``validation_fraction`` of every piece (the validation part), so that both parts cover every
    piece. Annotations are kept in the training recording's frames.
    """

    pieces: tuple[tuple[int, int], ...]
    validation_fraction: float = 0.0

    @property
    def num_samples(self) -> int:
        return sum(end - start for start, end in self.pieces)

    def parts(self) -> list[tuple[int, int]]:
        """Frames of segment 0 that make up the training recording, in its order (adjacent ones merged)."""
        cuts = self._validation_starts()
        parts = [(s, c) for (s, _), c in zip(self.pieces, cuts)] + [(c, e) for (_, e), c in zip(self.pieces, cuts)]
        merged: list[tuple[int, int]] = []
        for start, end in parts:
            if end <= start:
                continue
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def validation_parts(self) -> list[tuple[int, int]]:
        """Frames of segment 0 held out for validation: the last ``validation_fraction`` of each piece."""
        return [(c, e) for (_, e), c in zip(self.pieces, self._validation_starts()) if e > c]

    @property
    def num_training_samples(self) -> int:
        """Samples of the training part: frames ``[0, num_training_samples)`` of the training recording."""
        return sum(c - start for (start, _), c in zip(self.pieces, self._validation_starts()))

    def _validation_starts(self) -> list[int]:
        """The frame where each piece's validation part begins (its end when there is none)."""
        return [start + int(round((end - start) * (1.0 - self.validation_fraction))) for start, end in self.pieces]

    def training_recording(self, recording: BaseRecording) -> BaseRecording:
        """Segment 0 of ``recording`` cut to the training recording (``parts`` end to end)."""
        return _cut(recording, self.parts())

    def teacher_recording(self, recording: BaseRecording) -> BaseRecording:
        """Segment 0 of ``recording`` cut to the window's pieces end to end, in time order (what the teacher sorts)."""
        return _cut(recording, list(self.pieces))

    def from_pieces_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames of the pieces end to end (the teacher's recording) -> (which fall in them, frames of segment 0)."""
        return _map_frames(np.asarray(frames, dtype=np.int64), list(self.pieces), forward=False)

    def to_training_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames of segment 0 -> (which fall in the window, their frames in the training recording)."""
        return _map_frames(np.asarray(frames, dtype=np.int64), self.parts(), forward=True)

    def from_training_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames of the training recording -> (which fall in it, frames of segment 0)."""
        return _map_frames(np.asarray(frames, dtype=np.int64), self.parts(), forward=False)

    def describe(self, sampling_frequency: float) -> str:
        fs = sampling_frequency
        if len(self.pieces) == 1:
            (start, end), = self.pieces
            return f"{(end - start) / fs:.1f} s from {start / fs:.1f} s"
        lengths = {round((e - s) / fs, 1) for s, e in self.pieces}
        length = f"{lengths.pop():g} s" if len(lengths) == 1 else "pieces"
        starts = ", ".join(f"{s / fs:.0f}" for s, _ in self.pieces)
        return f"{self.num_samples / fs:.1f} s in {len(self.pieces)} pieces of {length} starting at {starts} s"


@dataclass
class Annotations:
    """Annotated spikes in the training window: sample indices in the training recording (see
    ``TrainingWindow``) and unit indices into ``unit_ids``, sorted by sample. ``uncertain`` (None: none) marks
    spikes that are neither positives nor negatives in training and are not counted when thresholds are chosen
    (a teacher ensemble's spikes that only one sorter claims)."""

    sample_index: np.ndarray
    unit_index: np.ndarray
    unit_ids: np.ndarray
    source: str
    uncertain: np.ndarray | None = None

    @property
    def num_units(self) -> int:
        return len(self.unit_ids)

    def spike_counts(self) -> np.ndarray:
        return np.bincount(self.unit_index, minlength=self.num_units)

    @property
    def certain(self) -> np.ndarray:
        """Mask of the spikes that are positives (all but the ``uncertain``)."""
        if self.uncertain is None:
            return np.ones(len(self.sample_index), dtype=bool)
        return ~self.uncertain


def _cut(recording: BaseRecording, parts: list[tuple[int, int]]) -> BaseRecording:
    from spikeinterface.core import concatenate_recordings, select_segment_recording

    segment = select_segment_recording(recording, 0) if recording.get_num_segments() > 1 else recording
    slices = [segment.frame_slice(start, end) for start, end in parts]
    return slices[0] if len(slices) == 1 else concatenate_recordings(slices)


def _map_frames(frames: np.ndarray, parts: list[tuple[int, int]], forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """``forward``: frames of segment 0 -> frames of ``parts`` end to end (and which fall in a part);
    else the inverse. Returns (kept mask, mapped frames of the kept ones)."""
    lengths = np.array([end - start for start, end in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    starts = np.array([start for start, _ in parts], dtype=np.int64)
    if forward:
        keep = np.zeros(len(frames), dtype=bool)
        mapped = np.zeros(len(frames), dtype=np.int64)
        for start, length, offset in zip(starts, lengths, offsets):
            inside = (frames >= start) & (frames < start + length)
            keep |= inside
            mapped[inside] = frames[inside] - start + offset
        return keep, mapped[keep]
    keep = (frames >= 0) & (frames < lengths.sum())
    part = np.searchsorted(offsets, frames[keep], side="right") - 1
    return keep, frames[keep] - offsets[part] + starts[part]


def default_train_duration_s(segment_s: float) -> float:
    """The training window's length (s) when ``train_duration_s`` is None: the first half of a first segment of
    ``segment_s`` seconds, at most ``MAX_DEFAULT_TRAIN_DURATION_S``."""
    return min(segment_s / 2.0, MAX_DEFAULT_TRAIN_DURATION_S)


def default_train_pieces(segment_s: float, duration_s: float, start_s: float = 0.0) -> int:
    """How many pieces the window is cut into when ``train_pieces`` is None: ``DEFAULT_TRAIN_PIECES`` when the
    segment from ``start_s`` is at least ``SPREAD_FROM_WINDOWS`` windows long, else 1 (a short recording drifts little)."""
    return DEFAULT_TRAIN_PIECES if segment_s - start_s >= SPREAD_FROM_WINDOWS * duration_s else 1


def training_pieces_s(segment_s: float, params: dict) -> list[tuple[float, float]]:
    """The training window's pieces, (start, end) in s of a first segment ``segment_s`` s long, for ``params``
    (``train_start_s``, ``train_duration_s``, ``train_pieces``); the first starts at ``train_start_s``, the last
    ends at the segment's end."""
    start_s = float(params["train_start_s"])
    duration_s = params["train_duration_s"]
    duration_s = default_train_duration_s(segment_s) if duration_s is None else float(duration_s)
    if start_s >= segment_s:
        raise ValueError(
            f"esort parameter 'train_start_s'={start_s} s is outside the first segment ({segment_s:.3f} s long)."
        )
    if start_s + duration_s > segment_s + 1e-9:
        raise ValueError(
            f"The training window {start_s}-{start_s + duration_s} s (train_start_s + train_duration_s) is longer "
            f"than the first segment of the recording ({segment_s:.3f} s); shorten 'train_duration_s'."
        )
    count = params.get("train_pieces")
    count = default_train_pieces(segment_s, duration_s, start_s) if count is None else int(count)
    piece_s = duration_s / count
    if count == 1:
        return [(start_s, start_s + duration_s)]
    step_s = (segment_s - start_s - piece_s) / (count - 1)
    return [(start_s + k * step_s, start_s + k * step_s + piece_s) for k in range(count)]


def training_window(recording: BaseRecording, params: dict) -> TrainingWindow:
    """The training window in frames, checked against the first segment; its validation part is
    ``validation_fraction`` of each piece (none in few-shot training, which holds nothing out)."""
    fs = recording.get_sampling_frequency()
    num_samples = recording.get_num_samples(segment_index=0)
    count = params.get("train_pieces")
    if count is not None and count > num_samples:  # refused at once, before listing millions of empty pieces
        pieces = ()
    else:
        pieces = tuple((int(round(a * fs)), min(int(round(b * fs)), num_samples))
                       for a, b in training_pieces_s(num_samples / fs, params))
    if len(pieces) == 0 or any(end <= start for start, end in pieces):
        raise ValueError(
            f"esort: the training window ({params['train_duration_s']} s in {len(pieces) or count} pieces from "
            f"{params['train_start_s']} s) has an empty piece; lengthen 'train_duration_s' or lower 'train_pieces'."
        )
    fraction = 0.0 if params.get("annotated_spikes_per_unit") is not None else float(params.get("validation_fraction", 0.0))
    return TrainingWindow(pieces, fraction)


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


def sorting_to_annotations(sorting: BaseSorting, window: TrainingWindow, source: str, teacher: bool = False) -> Annotations:
    """Spikes of segment 0 of ``sorting`` in ``window``, in training-recording frames; ``teacher``: the sorting
    is of the window's pieces end to end (``TrainingWindow.teacher_recording``), else of the whole segment."""
    spikes = sorting.to_spike_vector()
    spikes = spikes[spikes["segment_index"] == 0]
    return spikes_to_annotations(spikes["sample_index"], spikes["unit_index"], np.asarray(sorting.unit_ids), window,
                                 source, teacher)


def spikes_to_annotations(frames: np.ndarray, units: np.ndarray, unit_ids: np.ndarray, window: TrainingWindow,
                          source: str, teacher: bool, uncertain: np.ndarray | None = None) -> Annotations:
    """Spikes (frames of segment 0, or of the window's pieces end to end with ``teacher``) in ``window``, in
    training-recording frames."""
    frames, units = np.asarray(frames, dtype=np.int64), np.asarray(units, dtype=np.int64)
    if teacher:
        inside, frames = window.from_pieces_frames(frames)
        units = units[inside]
        uncertain = None if uncertain is None else uncertain[inside]
    inside, frames = window.to_training_frames(frames)
    units = units[inside]
    uncertain = None if uncertain is None else uncertain[inside]
    order = np.argsort(frames, kind="stable")
    return Annotations(
        sample_index=frames[order],
        unit_index=units[order],
        unit_ids=np.asarray(unit_ids),
        source=source,
        uncertain=None if uncertain is None else uncertain[order],
    )


def teacher_names(params: dict) -> list[str]:
    """The annotation sorters: ``annotation_sorter`` as a list."""
    name = params["annotation_sorter"]
    return [name] if isinstance(name, str) else list(name)


def teacher_params(params: dict, name: str) -> dict:
    """``run_sorter`` parameters of annotation sorter ``name``: ``annotation_sorter_params``, or with several
    sorters its entry ``name`` (none: the sorter's defaults). A sorter that takes ``job_kwargs``
    (SpikeInterface's own: spykingcircus2, tridesclous2) gets esort's ``job_kwargs`` unless they are given, so
    that it runs on the cores esort was given (SpikeInterface's global default is one job)."""
    from spikeinterface.sorters import sorter_dict

    given = params["annotation_sorter_params"]
    teacher = dict(given if isinstance(params["annotation_sorter"], str) else given.get(name, {}))
    if "job_kwargs" not in teacher and name in sorter_dict and "job_kwargs" in sorter_dict[name].default_params():
        job_kwargs = resolve_job_kwargs(params.get("job_kwargs", {}))
        job_kwargs.pop("progress_bar", None)  # the sorter sets it from run_sorter's verbose
        teacher["job_kwargs"] = job_kwargs
    return teacher


def check_annotation_source(recording: BaseRecording, params: dict) -> None:
    """Raise ``ValueError`` when the annotation sorting folder is unreadable or does not fit the recording,
    or when the annotation sorter is not installed."""
    from spikeinterface.sorters import installed_sorters

    path = params["annotation_sorting_path"]
    if path is not None:
        check_sorting_matches(load_annotation_sorting(path), recording, f"annotation sorting {path}")
        return
    names = teacher_names(params)
    if len(names) == 0 or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"esort parameter 'annotation_sorter' must be a sorter name or a list of different sorter "
                         f"names, got {params['annotation_sorter']!r}.")
    if not isinstance(params["annotation_sorter"], str):
        extra = sorted(set(params["annotation_sorter_params"]) - set(names))
        if extra:
            raise ValueError(
                f"esort parameter 'annotation_sorter_params': with several annotation sorters it maps each sorter "
                f"name to its run_sorter parameters; {extra} is not one of {names}."
            )
    for name in names:
        if name == "esort":
            raise ValueError("esort parameter 'annotation_sorter' cannot be 'esort' itself.")
        if name not in installed_sorters():
            raise ValueError(
                f"esort parameter 'annotation_sorter'={name!r} is not installed here; installed sorters: "
                f"{installed_sorters()}. Install it, choose another, or give 'annotation_sorting_path'."
            )


def run_annotation_sorter(
    recording: BaseRecording, window: TrainingWindow, name: str, sorter_params: dict, folder: Path, verbose: bool
) -> BaseSorting:
    """Run sorter ``name`` with ``run_sorter`` on the training window's pieces of segment 0, end to end."""
    from spikeinterface.sorters import run_sorter

    window_recording = window.teacher_recording(recording)
    jobs = sorter_params.get("job_kwargs", {}).get("n_jobs")
    logger.info("annotation: running %s on %s of segment 0%s", name, window.describe(recording.sampling_frequency),
                "" if jobs is None else f", {jobs} CPU job(s)")
    try:
        return run_sorter(
            name, window_recording, folder=folder, remove_existing_folder=True, verbose=verbose, **sorter_params,
        )
    except Exception as err:
        raise RuntimeError(
            f"esort: the annotation sorter {name!r} failed on the training window ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}). Its log is in {folder}; fix its "
            "'annotation_sorter_params', choose another 'annotation_sorter', or give 'annotation_sorting_path'."
        ) from err


def drop_small_units(annotations: Annotations, min_spikes: int) -> Annotations:
    """Remove units with fewer than ``min_spikes`` annotated spikes (not counting the uncertain); log which."""
    counts = np.bincount(annotations.unit_index[annotations.certain], minlength=annotations.num_units)
    keep_units = np.flatnonzero(counts >= min_spikes)
    dropped = [(annotations.unit_ids[u], int(counts[u])) for u in np.flatnonzero(counts < min_spikes)]
    if dropped:
        logger.info(
            "annotation: dropped %d unit(s) with fewer than %d spikes (unit id, spikes): %s",
            len(dropped), min_spikes, ", ".join(f"({uid}, {n})" for uid, n in dropped),
        )
    remap = np.full(annotations.num_units, -1, dtype=np.int64)
    remap[keep_units] = np.arange(len(keep_units))
    return remap_units(annotations, remap, annotations.unit_ids[keep_units])


def remap_units(annotations: Annotations, remap: np.ndarray, unit_ids: np.ndarray, source: str | None = None) -> Annotations:
    """``annotations`` with the spikes of unit ``i`` given to unit ``remap[i]`` of ``unit_ids`` (-1: dropped)."""
    new_unit = remap[annotations.unit_index]
    keep = new_unit >= 0
    return Annotations(
        sample_index=annotations.sample_index[keep],
        unit_index=new_unit[keep],
        unit_ids=np.asarray(unit_ids),
        source=annotations.source if source is None else source,
        uncertain=None if annotations.uncertain is None else annotations.uncertain[keep],
    )


def annotate(
    recording: BaseRecording, window: TrainingWindow, params: dict, folder: Path, verbose: bool = False
) -> Annotations:
    """Annotated spikes of the training window, from ``annotation_sorting_path`` or ``annotation_sorter`` (one
    sorter, or several combined by ``ensemble.combine_sortings``)."""
    if params["annotation_sorting_path"] is not None:
        path = params["annotation_sorting_path"]
        sorting = load_annotation_sorting(path)
        check_sorting_matches(sorting, recording, f"annotation sorting {path}")
        annotations = sorting_to_annotations(sorting, window, source=f"sorting folder {path}")
        return checked_annotations(annotations, window, params)
    names = teacher_names(params)
    if len(names) == 1:
        sorting = run_annotation_sorter(recording, window, names[0], teacher_params(params, names[0]),
                                        Path(folder) / "annotation_sorter", verbose)
        annotations = sorting_to_annotations(sorting, window, source=f"sorter {names[0]}", teacher=True)
        return checked_annotations(annotations, window, params)
    sortings = {
        name: run_annotation_sorter(recording, window, name, teacher_params(params, name),
                                    Path(folder) / "annotation_sorter" / name, verbose)
        for name in names
    }
    combined = combine_sortings(sortings, params["ensemble_unmatched_units"])
    (Path(folder) / "annotation_sorter" / "ensemble.json").write_text(json.dumps(dict(
        combined.report, units=[dict(unit_id=i, sources={k: str(v) for k, v in s.items()})
                                for i, s in enumerate(combined.sources)],
    ), indent=2, default=str), encoding="utf8")
    annotations = spikes_to_annotations(combined.sample_index, combined.unit_index, combined.unit_ids, window,
                                        f"sorters {' + '.join(names)}", teacher=True, uncertain=combined.uncertain)
    return checked_annotations(annotations, window, params)


def checked_annotations(annotations: Annotations, window: TrainingWindow, params: dict) -> Annotations:
    """``annotations`` without units under ``min_spikes_per_unit``; raises ``ValueError`` when nothing is left."""
    logger.info(
        "annotation: %d spikes of %d units from %s%s", len(annotations.sample_index), annotations.num_units,
        annotations.source,
        "" if annotations.uncertain is None else f" ({int(annotations.uncertain.sum())} uncertain)",
    )
    if len(annotations.sample_index) == 0:
        raise ValueError(
            f"esort: the annotations ({annotations.source}) have no spike in the training window "
            f"(frames {list(window.pieces)} of segment 0); check train_start_s/train_duration_s/train_pieces."
        )
    annotations = drop_small_units(annotations, params["min_spikes_per_unit"])
    if annotations.num_units == 0:
        raise ValueError(
            f"esort: no annotated unit has at least min_spikes_per_unit={params['min_spikes_per_unit']} spikes "
            "in the training window; lengthen the window or lower min_spikes_per_unit."
        )
    return annotations
