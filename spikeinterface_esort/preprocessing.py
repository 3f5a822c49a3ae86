"""Preprocessing: bandpass filter and common median reference.

The result is a lazy SpikeInterface recording in float32; traces are only read,
chunk by chunk, by training and inference. Two filters give the same zero-phase
Butterworth response (order 5, gain |H(f)|^2, as a forward-backward pass):
``filter_method="fft"`` (``FFTBandpassRecording``, one FFT per chunk, with the median
reference in the same pass) and ``filter_method="sosfiltfilt"`` (SpikeInterface's
``bandpass_filter`` and ``common_reference``).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal
import spikeinterface.preprocessing as spre
import torch
from spikeinterface.core import BaseRecording, NumpyRecording, get_noise_levels
from spikeinterface.preprocessing.basepreprocessor import BasePreprocessor, BasePreprocessorSegment

from .parameters import PARAMETERS_BY_NAME
FILTER_ORDER = 5  # Butterworth order, as SpikeInterface's bandpass_filter
FFT_MARGIN_PERIODS = 10  # margin on each side of a chunk, in periods of freq_min (33 ms at 300 Hz)
MEDIAN_BLOCK_SAMPLES = 1024  # samples sorted at once by the median reference
TRANSPOSE_TILE = 256  # rows copied at once by transposed_float32

_local = threading.local()


@contextlib.contextmanager
def preprocessing_threads(threads: int):
    """Threads ``FFTBandpassRecording`` uses (FFT workers, median reference split by samples) for the chunks read
    by this thread inside the block; one outside (callers that read chunks in parallel, e.g. training, need no more)."""
    previous = getattr(_local, "threads", 1)
    _local.threads = max(1, int(threads))
    try:
        yield
    finally:
        _local.threads = previous


def check_preprocessing_params(recording: BaseRecording, params: dict) -> None:
    """Raise ``ValueError`` when the band does not fit the recording's sampling rate."""
    if not params["apply_preprocessing"]:
        return
    nyquist = recording.get_sampling_frequency() / 2.0
    if params["freq_max"] >= nyquist:
        raise ValueError(
            f"esort parameter 'freq_max'={params['freq_max']} Hz must be below the Nyquist frequency of "
            f"this recording ({nyquist:g} Hz at {2 * nyquist:g} Hz sampling); lower freq_max."
        )
    if params["freq_min"] >= params["freq_max"]:
        raise ValueError(
            f"esort parameter 'freq_min'={params['freq_min']} Hz must be below freq_max={params['freq_max']} Hz."
        )


def preprocess(recording: BaseRecording, params: dict) -> BaseRecording:
    """Bandpass filter (freq_min-freq_max Hz) and, if asked, common median reference; float32.
    ``params["filter_method"]`` chooses the implementation (models saved before it existed used 'sosfiltfilt')."""
    if not params["apply_preprocessing"]:
        return spre.astype(recording, "float32") if recording.get_dtype() != np.float32 else recording
    check_preprocessing_params(recording, params)
    median_reference = bool(params["common_reference"]) and recording.get_num_channels() > 1
    method = params.get("filter_method", "sosfiltfilt")
    PARAMETERS_BY_NAME["filter_method"].check(method)
    if method == "fft":
        return FFTBandpassRecording(recording, params["freq_min"], params["freq_max"], median_reference)
    out = spre.bandpass_filter(recording, freq_min=params["freq_min"], freq_max=params["freq_max"], dtype="float32")
    if median_reference:
        out = spre.common_reference(out, reference="global", operator="median")
    return out


@lru_cache(maxsize=16)
def _fft_gain(num_samples: int, sampling_frequency: float, freq_min: float, freq_max: float) -> np.ndarray:
    """|H(f)|^2 of the order-5 Butterworth bandpass at the rfft frequencies of ``num_samples`` samples, float32
    (the response of a forward-backward pass), shaped (frequencies, 1)."""
    sos = scipy.signal.iirfilter(FILTER_ORDER, [freq_min, freq_max], fs=sampling_frequency, btype="bandpass",
                                 ftype="butter", output="sos")
    _, h = scipy.signal.sosfreqz(sos, worN=np.fft.rfftfreq(num_samples, 1.0 / sampling_frequency), fs=sampling_frequency)
    return (np.abs(h) ** 2).astype(np.float32)[:, None]


def median_reference_(traces: np.ndarray, threads: int = 1) -> np.ndarray:
    """Subtract, in place, the median across channels at each sample of float ``traces`` (samples, channels);
    the same values as ``np.median`` (mean of the two middle values for an even channel count). With ``threads``
    > 1, blocks of samples are done in parallel (numpy's sort releases the GIL).

    Each row is sorted whole: ``np.sort`` is vectorised on x86 (numpy >= 2.0), where it is faster than the
    two-element partition ``np.median`` uses (the cost of reading + filtering is in docs/speed.md)."""
    if threads > 1 and traces.shape[0] >= 2 * threads:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(median_reference_, np.array_split(traces, threads)))  # views: in place
        return traces
    for first in range(0, traces.shape[0], MEDIAN_BLOCK_SAMPLES):  # the sorted copy stays small (cache-sized)
        block = traces[first : first + MEDIAN_BLOCK_SAMPLES]
        block -= median_of_sorted_rows(np.sort(block, axis=1))[:, None]
    return traces


def median_of_sorted_rows(ordered: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The median of each row of ``ordered`` (samples, channels), sorted along its rows, numpy or torch: the middle
    value, or the mean of the two middle values for an even channel count (as ``np.median``)."""
    middle = ordered.shape[1] // 2
    return ordered[:, middle] if ordered.shape[1] % 2 else (ordered[:, middle - 1] + ordered[:, middle]) / 2


def transposed_float32(array: np.ndarray) -> np.ndarray:
    """``array.T`` as a contiguous float32 array, copied in tiles of ``TRANSPOSE_TILE`` rows that stay in cache.

    The FFT filter on one thread works channel-major: FFTs along contiguous rows of (channels, samples) are much
    faster than along the samples axis of (samples, channels), and the two tiled transposes cost less than that
    saves (reading + filtering on one thread: docs/speed.md). With several FFT workers the samples-axis transform is
    kept (it parallelises better; CHANGELOG.md)."""
    out = np.empty((array.shape[1], array.shape[0]), dtype=np.float32)
    for first in range(0, array.shape[0], TRANSPOSE_TILE):
        out[:, first : first + TRANSPOSE_TILE] = array[first : first + TRANSPOSE_TILE].T
    return out


class FFTBandpassRecording(BasePreprocessor):
    """Zero-phase Butterworth bandpass (order 5, ``freq_min``-``freq_max`` Hz) applied as one FFT per chunk,
    then, if ``median_reference``, the global common median reference; float32.

    The filter's gain is |H(f)|^2, the frequency response of SpikeInterface's forward-backward ``sosfiltfilt``;
    each chunk is read with ``FFT_MARGIN_PERIODS`` periods of ``freq_min`` on each side (mirrored, odd
    extension, at the segment's ends), so the result does not depend on the chunking (within 1e-3 of the
    noise level, tested). Cheaper than ``sosfiltfilt`` on CPU (docs/speed.md), whose cost bounds a 384-channel sort on
    few cores.
    """

    def __init__(self, recording: BaseRecording, freq_min: float = 300.0, freq_max: float = 6000.0,
                 median_reference: bool = True):
        fs = recording.get_sampling_frequency()
        if not 0 < freq_min < freq_max < fs / 2:
            raise ValueError(f"FFTBandpassRecording needs 0 < freq_min < freq_max < {fs / 2:g} Hz, got "
                             f"{freq_min} and {freq_max}.")
        BasePreprocessor.__init__(self, recording, dtype="float32")
        self.annotate(is_filtered=True)
        if "offset_to_uV" in self.get_property_keys():
            self.set_channel_offsets(0)
        margin = int(np.ceil(FFT_MARGIN_PERIODS * fs / freq_min))
        for parent_segment in recording.segments:
            self.add_recording_segment(
                FFTBandpassRecordingSegment(parent_segment, fs, float(freq_min), float(freq_max), margin, median_reference)
            )
        self._kwargs = dict(recording=recording, freq_min=float(freq_min), freq_max=float(freq_max),
                            median_reference=bool(median_reference))

    def get_traces_on_device(self, segment_index: int, start_frame: int, end_frame: int,
                             device: torch.device) -> torch.Tensor:
        """Every channel's filtered traces of frames [start_frame, end_frame) as a float32 tensor (samples,
        channels) on ``device``, filtered there with torch (the same values as ``get_traces`` to float rounding)."""
        return self.segments[segment_index].get_traces_on_device(start_frame, end_frame, torch.device(device))


class FFTBandpassRecordingSegment(BasePreprocessorSegment):
    def __init__(self, parent_recording_segment, sampling_frequency: float, freq_min: float, freq_max: float,
                 margin: int, median_reference: bool):
        BasePreprocessorSegment.__init__(self, parent_recording_segment)
        self.sampling_frequency = sampling_frequency
        self.freq_min, self.freq_max = freq_min, freq_max
        self.margin = margin
        self.median_reference = median_reference

    def read_padded(self, start_frame: int | None, end_frame: int | None, channel_indices=None):
        """The parent's traces of frames [start_frame - margin, end_frame + margin), in its own dtype, extended past
        the segment's ends by odd reflection (as filtfilt pads); with ``before`` and ``after``, the samples
        around [start_frame, end_frame). Every channel when the median is taken, else ``channel_indices``."""
        num_samples = self.get_num_samples()
        start_frame = 0 if start_frame is None else int(start_frame)
        end_frame = num_samples if end_frame is None else int(end_frame)
        lo, hi = max(0, start_frame - self.margin), min(num_samples, end_frame + self.margin)
        # the median needs every channel; without it, only those asked for are read and filtered
        read_channels = slice(None) if self.median_reference else channel_indices
        traces = np.asarray(self.parent_recording_segment.get_traces(lo, hi, read_channels))
        before, after = start_frame - lo, hi - end_frame
        pad_before, pad_after = self.margin - before, self.margin - after
        if end_frame > start_frame and (pad_before > 0 or pad_after > 0):
            traces = np.pad(traces.astype(np.float32), ((max(0, pad_before), max(0, pad_after)), (0, 0)),
                            mode="reflect", reflect_type="odd")
            before, after = before + max(0, pad_before), after + max(0, pad_after)
        return traces, before, after

    def get_traces(self, start_frame, end_frame, channel_indices):
        traces, before, after = self.read_padded(start_frame, end_frame, channel_indices)
        length = traces.shape[0]
        if length <= before + after:  # an empty range
            return np.zeros((0, traces.shape[1]), dtype=np.float32)
        threads = getattr(_local, "threads", 1)
        n_fft = scipy.fft.next_fast_len(length, real=True)
        gain = _fft_gain(n_fft, self.sampling_frequency, self.freq_min, self.freq_max)
        if threads == 1:  # channel-major: see transposed_float32
            rows = transposed_float32(traces)  # (channels, samples)
            spectrum = scipy.fft.rfft(rows, n=n_fft, axis=1)
            spectrum *= gain.T
            filtered = scipy.fft.irfft(spectrum, n=n_fft, axis=1, overwrite_x=True)
            out = transposed_float32(filtered[:, before : length - after])
        else:
            traces = np.asarray(traces, dtype=np.float32)
            spectrum = scipy.fft.rfft(traces, n=n_fft, axis=0, workers=threads)
            spectrum *= gain
            filtered = scipy.fft.irfft(spectrum, n=n_fft, axis=0, overwrite_x=True, workers=threads)
            out = np.ascontiguousarray(filtered[before : length - after], dtype=np.float32)
        if self.median_reference:
            median_reference_(out, threads)
            out = out[:, channel_indices] if channel_indices is not None else out
        return out

    def get_traces_on_device(self, start_frame: int, end_frame: int, device: torch.device) -> torch.Tensor:
        """``get_traces`` of every channel as a float32 tensor (samples, channels) on ``device``, filtered there:
        the raw traces are copied in their own dtype (int16: half the bytes of float32), the FFT, gain and median
        run as torch operations (a GPU's, so that its sort is not bound by the CPU's filter)."""
        raw, before, after = self.read_padded(start_frame, end_frame)
        length = raw.shape[0]
        if length <= before + after:
            return torch.zeros((0, raw.shape[1]), dtype=torch.float32, device=device)
        if raw.dtype not in (np.int16, np.float16, np.float32):  # dtypes torch takes as they are
            raw = raw.astype(np.float32)
        traces = torch.from_numpy(np.require(raw, requirements=["C", "W"])).to(device).float()  # W: memmaps copied
        n_fft = scipy.fft.next_fast_len(length, real=True)
        gain = _fft_gain_on(n_fft, self.sampling_frequency, self.freq_min, self.freq_max, str(device))
        filtered = torch.fft.irfft(torch.fft.rfft(traces, n=n_fft, dim=0) * gain, n=n_fft, dim=0)
        out = filtered[before : length - after]
        if self.median_reference:
            out = out - median_of_sorted_rows(torch.sort(out, dim=1).values)[:, None]
        return out.contiguous()


@lru_cache(maxsize=16)
def _fft_gain_on(num_samples: int, sampling_frequency: float, freq_min: float, freq_max: float, device: str) -> torch.Tensor:
    """``_fft_gain`` as a tensor on ``device``, copied there once."""
    return torch.from_numpy(_fft_gain(num_samples, sampling_frequency, freq_min, freq_max)).to(device)


def correct_motion(recording: BaseRecording, preset: str, folder, job_kwargs: dict) -> BaseRecording:
    """SpikeInterface's motion estimation and interpolation with ``preset``; motion info saved in ``folder``.
    Every channel is kept (extrapolated at the borders) so that the channel layout does not change."""
    keys = ("n_jobs", "chunk_duration", "chunk_size", "chunk_memory", "total_memory", "progress_bar")
    return spre.correct_motion(
        recording, preset=preset, folder=folder, overwrite=True,
        interpolate_motion_kwargs=dict(border_mode="force_extrapolate"),
        **{k: job_kwargs[k] for k in keys if k in job_kwargs},
    )


def estimate_noise_levels(recording: BaseRecording, seed: int, progress_bar: bool = False, n_jobs: int = 1) -> np.ndarray:
    """Per-channel noise (MAD), in the recording's own units, from random chunks (read by ``n_jobs`` threads);
    floored to avoid dividing by zero on dead channels."""
    noise = get_noise_levels(
        recording, return_in_uV=False, random_slices_kwargs={"seed": seed}, force_recompute=True,
        progress_bar=progress_bar, n_jobs=max(1, int(n_jobs)), pool_engine="thread",
    )
    noise = np.asarray(noise, dtype="float32")
    positive = noise[noise > 0]
    floor = float(np.median(positive)) * 1e-3 if positive.size else 1.0
    return np.maximum(noise, floor)


def in_memory_recording(traces: torch.Tensor, noise_levels: np.ndarray, like: BaseRecording) -> BaseRecording:
    """A one-segment recording of ``traces`` (samples, channels) held in memory, normalised by ``noise_levels`` (as
    ``training.load_traces`` reads a window), with ``like``'s channels, probe, properties and units: chunks come
    back as float32 ``traces * noise_levels``, so that SpikeInterface's tools read the window without filtering it
    again. ``traces`` is not copied."""
    if traces.shape != (like.get_num_samples(0), like.get_num_channels()):
        raise ValueError(f"traces of shape {tuple(traces.shape)} do not fit a recording of "
                         f"{like.get_num_samples(0)} samples x {like.get_num_channels()} channels")
    memory = NumpyRecording([traces.numpy()], like.get_sampling_frequency(), channel_ids=like.channel_ids)
    like.copy_metadata(memory, only_main=False)  # probe, locations, gains
    return spre.scale(memory, gain=np.asarray(noise_levels, dtype="float32"), dtype="float32")


def read_block(recording: BaseRecording, start: int, stop: int, segment_index: int,
               device: torch.device | None = None) -> np.ndarray | torch.Tensor:
    """Traces (samples, channels) of frames [start, stop), zero outside the segment; refuses NaN and inf.
    With ``device``, a float32 tensor filtered there (``recording`` must have ``get_traces_on_device``)."""
    num_samples = recording.get_num_samples(segment_index)
    lo, hi = max(start, 0), min(stop, num_samples)
    if device is None:
        traces = recording.get_traces(segment_index=segment_index, start_frame=lo, end_frame=hi, return_in_uV=False)
        finite = np.isfinite(traces).all(axis=0) if traces.dtype.kind == "f" else None
    else:
        traces = recording.get_traces_on_device(segment_index, lo, hi, device)
        finite = torch.isfinite(traces).all(dim=0).cpu().numpy()
    if finite is not None and not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"The recording has NaN or infinite samples in segment {segment_index}, frames {lo}-{hi}, channels "
            f"{recording.channel_ids[bad][:10].tolist()}: remove those channels or interpolate them "
            "(spikeinterface.preprocessing.interpolate_bad_channels) before sorting."
        )
    if lo == start and hi == stop:
        return traces
    if device is not None:
        return torch.nn.functional.pad(traces, (0, 0, lo - start, stop - hi))
    block = np.zeros((stop - start, recording.get_num_channels()), dtype=traces.dtype)
    block[lo - start : lo - start + traces.shape[0]] = traces
    return block
