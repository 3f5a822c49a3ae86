"""Inference: run a trained model over a whole recording, chunk by chunk.

Each chunk of ``chunk_size`` samples is read with the margins the network window and the
smoothing need, so the spikes found chunk by chunk are exactly those a dense
evaluation of the whole segment finds. Outside the recording, traces are zero.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from spikeinterface.core import BaseRecording
from tqdm.auto import tqdm

from .preprocessing import preprocessing_threads, read_block

if TYPE_CHECKING:
    from .model import ESortModel


@dataclass
class DetectedSpikes:
    """Spikes of one recording: sample index, segment index, unit index into the model's
    unit ids, and smoothed network probability; sorted by segment then time."""

    sample_index: np.ndarray
    segment_index: np.ndarray
    unit_index: np.ndarray
    probability: np.ndarray
    timings: dict = field(default_factory=dict)


def filters_on_device(recording: BaseRecording, device: torch.device) -> bool:
    """Whether inference on ``device`` reads ``recording`` filtered on the device: on a GPU, when the recording
    can (the FFT filter, ``filter_method="fft"``, as the last preprocessing step)."""
    return device.type == "cuda" and hasattr(recording, "get_traces_on_device")


@dataclass(frozen=True)
class ReadMode:
    """How chunks are read and the network threaded on CPU: ``prefetch`` (the next chunk is read and filtered in
    one thread while the network runs on this one; otherwise each chunk is read when needed, filtered with every
    thread), and the network's torch threads."""

    prefetch: bool
    network_threads: int


class ThreadTuner:
    """Chooses, on CPU, how reading + filtering and the network share the cores.

    They compete for the same cores. Three ways are timed on the first chunks (wall time per sample, waiting
    included; the median over each way's chunks) and the fastest is kept for the rest of the recording: read
    ahead with every ``threads`` for the network; read ahead with one core left to the reader; read each chunk
    when needed, filtered with every thread (FFT filter), then the network with every thread. Each way is tried
    on ``trial_chunks`` consecutive chunks (2, up to ``MAX_TRIAL_CHUNKS`` on recordings of
    ``CHUNKS_PER_TRIAL_CHUNK`` chunks per trial chunk or more: longer trials where they cost little), after
    chunk 0 (warm-up, first way); the chunk after the trials (``decision``) is read when needed (the choice is
    made as it starts) and runs with the chosen way's threads. Recordings of fewer than ``MIN_CHUNKS`` chunks, or
    one thread, keep the first way. ``finish`` restores the torch threads.
    """

    WAYS = ("read_ahead", "read_ahead_one_core_to_reader", "read_in_turn")  # names of ``modes``, in order
    MIN_CHUNKS = 10
    MAX_TRIAL_CHUNKS = 5
    CHUNKS_PER_TRIAL_CHUNK = 40  # e.g. 200 chunks (200 s at 1 s chunks): 5 chunks per way

    def __init__(self, threads: int, num_chunks: int):
        self.threads = threads
        self.active = threads > 1 and num_chunks >= self.MIN_CHUNKS
        self.modes = (ReadMode(True, threads), ReadMode(True, threads - 1), ReadMode(False, threads))
        self.trial_chunks = int(np.clip(num_chunks // self.CHUNKS_PER_TRIAL_CHUNK, 2, self.MAX_TRIAL_CHUNKS))
        # chunk index -> the way it tries
        self.trials = {1 + m * self.trial_chunks + k: m for m in range(len(self.modes)) for k in range(self.trial_chunks)}
        self.decision = 1 + len(self.modes) * self.trial_chunks
        self.trial = {m: [] for m in range(len(self.modes))}
        self.last = None
        self.chosen = self.modes[0]
        self.trial_seconds: list[float] = []  # per way, median seconds per sample of its trial chunks

    def planned(self, index: int) -> ReadMode:
        """The mode of chunk ``index`` as far as known before chunk ``index - 1`` runs (to decide whether to
        read it ahead): the trial's, the chosen one after the decision, no read-ahead for the decision chunk."""
        if not self.active:
            return self.modes[0]
        if index in self.trials:
            return self.modes[self.trials[index]]
        if index == self.decision:
            return ReadMode(False, self.threads)
        return self.chosen

    def before_chunk(self, index: int, now: float, previous_samples: int = 1) -> ReadMode:
        """Called before chunk ``index`` is sorted, at time ``now`` (s), ``previous_samples`` being chunk
        ``index - 1``'s length: records that chunk's time, sets the torch threads and returns chunk ``index``'s mode."""
        if not self.active:
            return self.modes[0]
        if self.last is not None and index - 1 in self.trials:  # chunk index - 1 just finished
            self.trial[self.trials[index - 1]].append((now - self.last) / max(1, previous_samples))
        self.last = now
        if index == self.decision:
            self.trial_seconds = [float(np.median(self.trial[m])) for m in range(len(self.modes))]
            self.chosen = self.modes[int(np.argmin(self.trial_seconds))]
        mode = self.planned(index) if index != self.decision else self.chosen
        torch.set_num_threads(mode.network_threads)
        return mode

    def finish(self) -> ReadMode:
        torch.set_num_threads(self.threads)
        return self.chosen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def detect_in_recording(
    model: ESortModel,
    recording: BaseRecording,
    chunk_size: int,
    progress_bar: bool = True,
    segment_indices: list[int] | None = None,
    frame_range: tuple[int, int] | None = None,
    thresholds: np.ndarray | None = None,
    stride: int = 1,
    prefetch: bool = True,
    filter_on_device: bool | None = None,
) -> DetectedSpikes:
    """Spikes of every segment of a preprocessed ``recording`` (or of ``frame_range`` of the given segments).

    With ``stride`` 1 the network runs on every sample (the exact, dense evaluation). With ``stride`` S it
    runs on one sample in S, on a grid fixed to the segment (samples k * S + window centre), and each
    spike's time is refined between grid points by parabolic interpolation. A spike belongs to the chunk
    holding its grid point, so chunking never changes the result.
    With ``prefetch`` the next chunk is read and preprocessed in a thread while the network runs (the filters
    and numpy release the GIL), so on a GPU reading overlaps compute (a reader filtering on the CPU does it with
    every CPU thread); on a CPU, ``ThreadTuner`` decides whether to read ahead and how to share the threads.
    With ``filter_on_device`` (default: ``filters_on_device``, i.e. on a GPU with the FFT filter) the raw traces
    are copied to the model's device and filtered there, so that a GPU's sort is bound by reading the file, not
    by the CPU's filter; the spikes are those of the CPU filter (float rounding aside).
    Timings (s) summed in ``timings``: waiting for the traces (reading/preprocessing not hidden by the overlap),
    network, post-processing; with the tuner, ``network_threads`` (the torch threads it kept), ``read_ahead``
    (1 if it kept reading ahead) and, per way of ``ThreadTuner.WAYS``, ``tuner_<way>_s_per_s`` (its trial's
    seconds per second of recording).
    """
    device = model.device
    margin_before, margin_after = model.margin_before(stride), model.margin_after(stride)
    if segment_indices is None:
        segment_indices = list(range(recording.get_num_segments()))
    jobs = []
    for segment_index in segment_indices:
        start, stop = frame_range if frame_range is not None else (0, recording.get_num_samples(segment_index))
        for chunk_start in range(start, stop, chunk_size):
            jobs.append((segment_index, chunk_start, min(chunk_start + chunk_size, stop)))

    if filter_on_device is None:
        filter_on_device = filters_on_device(recording, device)
    elif filter_on_device and not hasattr(recording, "get_traces_on_device"):
        raise ValueError("filter_on_device needs a recording filtered by FFTBandpassRecording (filter_method='fft').")
    timings = dict(read_s=0.0, network_s=0.0, postprocessing_s=0.0)
    threads = torch.get_num_threads()
    tuner = ThreadTuner(threads, len(jobs)) if (device.type == "cpu" and prefetch) else None
    # on a GPU the CPU is free while the network runs: a read-ahead thread filtering there uses every thread
    ahead_threads = threads if device.type != "cpu" else 1
    out_samples, out_segments, out_units, out_probs = [], [], [], []

    def read(job, reader_threads: int):
        segment_index, chunk_start, chunk_stop = job
        block_start = ((chunk_start - margin_before) // stride) * stride  # on the segment's grid
        with preprocessing_threads(reader_threads):
            return block_start, read_block(recording, block_start, chunk_stop + margin_after, segment_index,
                                           device if filter_on_device else None)

    def read_ahead(index: int) -> bool:
        return prefetch and index < len(jobs) and (tuner is None or tuner.planned(index).prefetch)

    # the next chunk is read and preprocessed in a thread while the network runs on this one
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="esort-read") as reader:
        try:
            pending = reader.submit(read, jobs[0], ahead_threads) if read_ahead(0) else None
            for i, job in enumerate(tqdm(jobs, desc="esort inference", unit="chunk", disable=not progress_bar)):
                segment_index, chunk_start, chunk_stop = job
                t0 = time.perf_counter()
                if tuner is not None:  # sets the network's threads for this chunk
                    tuner.before_chunk(i, t0, jobs[i - 1][2] - jobs[i - 1][1] if i else 1)
                # a chunk not read ahead is read now, with every thread (nothing else runs meanwhile)
                block_start, block = pending.result() if pending is not None else read(job, threads)
                pending = reader.submit(read, jobs[i + 1], ahead_threads) if read_ahead(i + 1) else None
                if filter_on_device:  # read_block gave a tensor, filtered on the device
                    traces = block
                else:
                    traces = torch.from_numpy(np.ascontiguousarray(block)).to(device, non_blocking=True)
                t1 = time.perf_counter()
                probabilities = model.probabilities(traces, stride)
                _sync(device)
                t2 = time.perf_counter()
                units, grid, samples, probs = model.spikes(probabilities, thresholds, stride)
                grid = grid + block_start
                mine = (grid >= chunk_start) & (grid < chunk_stop)
                units, samples, probs = units[mine], samples[mine] + block_start, probs[mine]
                _sync(device)
                t3 = time.perf_counter()
                timings["read_s"] += t1 - t0
                timings["network_s"] += t2 - t1
                timings["postprocessing_s"] += t3 - t2
                out_samples.append(samples.cpu().numpy().astype(np.int64))
                out_units.append(units.cpu().numpy().astype(np.int64))
                out_probs.append(probs.cpu().numpy().astype(np.float32))
                out_segments.append(np.full(len(out_samples[-1]), segment_index, dtype=np.int64))
        finally:  # the caller's thread count, even on error
            if tuner is not None:
                chosen = tuner.finish()
                timings["network_threads"] = chosen.network_threads
                timings["read_ahead"] = int(chosen.prefetch)
                fs = recording.get_sampling_frequency()
                for name, seconds in zip(ThreadTuner.WAYS, tuner.trial_seconds):  # what the choice was made on
                    timings[f"tuner_{name}_s_per_s"] = round(seconds * fs, 4)

    if not jobs:
        empty = np.zeros(0, dtype=np.int64)
        return DetectedSpikes(empty, empty, empty, np.zeros(0, dtype=np.float32), timings)
    sample_index, segment_index, unit_index, probability = (
        np.concatenate(x) for x in (out_samples, out_segments, out_units, out_probs)
    )
    order = np.lexsort((unit_index, sample_index, segment_index))
    return DetectedSpikes(
        sample_index[order], segment_index[order], unit_index[order], probability[order], timings
    )
