"""Online sorting: a trained model applied to samples as an acquisition system delivers them.

``OnlineSorter`` receives consecutive chunks of raw samples (any size) and returns, after
each, the spikes it can decide: those whose network window, smoothing and filter margin
are complete. The spikes of the whole stream are those of the offline sort of the same
samples (``ESortModel.sort``): same preprocessing (the model's filter on the buffered
samples, with its own margins), same network and post-processing. A spike at sample t is
returned as soon as sample ``t + lookahead_samples`` has arrived, so the latency is bounded
by ``lookahead_samples`` + one chunk + the compute time of one chunk
(``python -m spikeinterface_esort.tools.online_latency`` measures it).
"""

from __future__ import annotations

import time

import numpy as np
from spikeinterface.core import NumpyRecording

from .inference import DetectedSpikes, detect_in_recording
from .model import ESortModel
from .preprocessing import preprocess


def filter_margin_samples(model: ESortModel, num_channels: int) -> int:
    """Samples the model's preprocessing reads on each side of a requested range (its filter margins)."""
    probe = NumpyRecording(np.zeros((int(model.sampling_frequency), num_channels), dtype="float32"), model.sampling_frequency)
    segment = preprocess(probe, model.preprocessing)._recording_segments[0]
    margin = 0
    while segment is not None:
        margin += int(getattr(segment, "margin", 0) or 0)
        segment = getattr(segment, "parent_recording_segment", None)
    return margin


class OnlineSorter:
    """Streaming E-Sort over one continuous stream of raw samples.

    Parameters
    ----------
    model : ESortModel
        A trained model (``ESortModel.load(sorter_folder)``). Its preprocessing must not include motion
        correction, which needs the whole recording.
    stride : int, optional
        Network stride (default: the model's ``inference_stride``).
    dtype : numpy dtype, optional
        The dtype of the pushed samples (default float32); samples are in the same units as the raw traces
        the model was trained on (``get_traces(return_in_uV=False)``).
    """

    def __init__(self, model: ESortModel, stride: int | None = None, dtype="float32"):
        if model.preprocessing.get("motion_correction") is not None:
            raise ValueError(
                "Online sorting cannot apply motion correction (it estimates motion over the whole recording); "
                "train the model with motion_correction=None (drift augmentation handles slow drift)."
            )
        self.model = model
        self.stride = int(stride or model.params.get("inference_stride", 1))
        self.num_channels = len(model.channel_ids)
        self.dtype = np.dtype(dtype)
        self.filter_margin = filter_margin_samples(model, self.num_channels)
        self.margin_before = model.margin_before(self.stride) + self.filter_margin
        self.lookahead_samples = model.margin_after(self.stride) + self.filter_margin
        self._buffer = np.zeros((0, self.num_channels), dtype=self.dtype)
        self._buffer_start = 0  # absolute frame of _buffer[0], a multiple of stride
        self.samples_received = 0
        self.decided_until = 0  # spikes before this absolute frame have been returned

    @property
    def lookahead_ms(self) -> float:
        return 1000.0 * self.lookahead_samples / self.model.sampling_frequency

    def push(self, traces: np.ndarray) -> DetectedSpikes:
        """Append ``traces`` (samples, channels) and return the spikes decided by them (absolute sample indices)."""
        traces = np.asarray(traces)
        if traces.ndim != 2 or traces.shape[1] != self.num_channels:
            raise ValueError(f"push expects (samples, {self.num_channels}) traces, got shape {traces.shape}.")
        self._buffer = np.concatenate([self._buffer, traces.astype(self.dtype, copy=False)])
        self.samples_received += len(traces)
        return self._decide(self.samples_received - self.lookahead_samples, end_of_stream=False)

    def finish(self) -> DetectedSpikes:
        """The spikes left when the stream ends (its last samples treated like the end of a recording)."""
        return self._decide(self.samples_received, end_of_stream=True)

    def _decide(self, until: int, end_of_stream: bool) -> DetectedSpikes:
        lo, hi = self.decided_until, until
        if hi <= lo or len(self._buffer) == 0:
            return _empty()
        buffered = NumpyRecording(self._buffer, self.model.sampling_frequency, channel_ids=self.model.channel_ids)
        preprocessed = preprocess(buffered, self.model.preprocessing)
        start = self._buffer_start
        detected = detect_in_recording(
            self.model, preprocessed, chunk_size=hi - lo, progress_bar=False,
            frame_range=(lo - start, hi - start), stride=self.stride,
        )
        detected.sample_index = detected.sample_index + start
        self.decided_until = hi
        if not end_of_stream:  # keep what the next decision reads, from a frame on the stride grid
            keep_from = max(((hi - self.margin_before - self.filter_margin) // self.stride) * self.stride, self._buffer_start)
            self._buffer = self._buffer[keep_from - self._buffer_start :]
            self._buffer_start = keep_from
        return detected


def _empty() -> DetectedSpikes:
    empty = np.zeros(0, dtype=np.int64)
    return DetectedSpikes(empty, empty, empty, np.zeros(0, dtype=np.float32))


def concatenate(parts: list[DetectedSpikes]) -> DetectedSpikes:
    """One ``DetectedSpikes`` from the outputs of successive ``push`` / ``finish`` calls."""
    if not parts:
        return _empty()
    return DetectedSpikes(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                            ("sample_index", "segment_index", "unit_index", "probability")))


def stream(sorter: OnlineSorter, traces: np.ndarray, chunk_samples: int) -> tuple[DetectedSpikes, np.ndarray]:
    """Push ``traces`` chunk by chunk, then finish; returns all spikes and the seconds each push took."""
    parts, seconds = [], []
    for start in range(0, len(traces), chunk_samples):
        t0 = time.perf_counter()
        parts.append(sorter.push(traces[start : start + chunk_samples]))
        seconds.append(time.perf_counter() - t0)
    parts.append(sorter.finish())
    return concatenate(parts), np.asarray(seconds)
