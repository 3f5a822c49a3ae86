"""Inference: run a trained model over a whole recording, chunk by chunk.

Each chunk of ``chunk_size`` samples is read with the margins the network window and the
smoothing need, so the spikes found chunk by chunk are exactly those a dense
evaluation of the whole segment finds. Outside the recording, traces are zero.
"""

from __future__ import annotations

import time
from collections import deque
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
    parallel_chunks: bool | None = None,
) -> DetectedSpikes:
    """Spikes of every segment of a preprocessed ``recording`` (or of ``frame_range`` of the given segments).

    With ``stride`` 1 the network runs on every sample (the exact, dense evaluation). With ``stride`` S it
    runs on one sample in S, on a grid fixed to the segment (samples k * S + window centre), and each
    spike's time is refined between grid points by parabolic interpolation. A spike belongs to the chunk
    holding its grid point, so chunking never changes the result.
    On a CPU with several torch threads and at least as many chunks, ``parallel_chunks`` (the default there) sorts
    whole chunks in as many worker threads, each reading, filtering and running the network on one core: every
    core does both kinds of work, so neither waits for the other (on 32-384 channels of a 2-core CPU, the default
    path runs 1.3-1.5 times as fast as with the network on every core and the next chunk read ahead:
    docs/speed.md). Otherwise (a GPU, one thread, fewer chunks than threads, or ``prefetch=False``) chunks are
    sorted in turn: with ``prefetch`` the next chunk is read and preprocessed in a thread while the network runs
    (the filters and numpy release the GIL; on a GPU the reader filters with every CPU thread), without it each
    chunk is read when needed, with every thread.
    With ``filter_on_device`` (default: ``filters_on_device``, i.e. on a GPU with the FFT filter) the raw traces
    are copied to the model's device and filtered there, so that a GPU's sort is bound by reading the file, not
    by the CPU's filter; the spikes are those of the CPU filter (float rounding aside).
    Timings (s) summed in ``timings``: waiting for the traces (reading/preprocessing not hidden by the overlap;
    with ``parallel_chunks``, the workers' whole reading time), network, post-processing, summed over the workers
    with ``parallel_chunks`` (then also ``parallel_chunks``, the number of workers).
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
    if parallel_chunks is None:  # with fewer chunks than threads (an online sorter's one chunk) workers would idle
        parallel_chunks = (device.type == "cpu" and prefetch and threads > 1 and not filter_on_device
                           and len(jobs) >= threads)
    elif parallel_chunks and (device.type != "cpu" or filter_on_device):
        raise ValueError("parallel_chunks sorts chunks on CPU threads, with the CPU filter.")

    def read(job, reader_threads: int) -> tuple[int, np.ndarray | torch.Tensor]:
        """Chunk ``job``'s block, from its first grid point before the margin: (its first frame, its traces)."""
        segment_index, chunk_start, chunk_stop = job
        block_start = ((chunk_start - margin_before) // stride) * stride  # on the segment's grid
        with preprocessing_threads(reader_threads):
            return block_start, read_block(recording, block_start, chunk_stop + margin_after, segment_index,
                                           device if filter_on_device else None)

    def on_device(block: np.ndarray | torch.Tensor) -> torch.Tensor:
        if filter_on_device:  # read_block gave a tensor, filtered on the device
            return block
        return torch.from_numpy(np.ascontiguousarray(block)).to(device, non_blocking=True)

    def sort(job, block_start: int, traces: torch.Tensor) -> tuple[tuple, float, float]:
        """The spikes (samples, segments, units, probabilities) whose grid point lies in chunk ``job``, and the
        seconds of the network and of post-processing."""
        segment_index, chunk_start, chunk_stop = job
        t0 = time.perf_counter()
        probabilities = model.probabilities(traces, stride)
        _sync(device)
        t1 = time.perf_counter()
        units, grid, samples, probs = model.spikes(probabilities, thresholds, stride)
        grid = grid + block_start
        mine = (grid >= chunk_start) & (grid < chunk_stop)
        samples = (samples[mine] + block_start).cpu().numpy().astype(np.int64)
        # a time refined between grid points can fall a few samples outside the segment at its ends
        np.clip(samples, 0, recording.get_num_samples(segment_index) - 1, out=samples)
        spikes = (samples, np.full(len(samples), segment_index, dtype=np.int64),
                  units[mine].cpu().numpy().astype(np.int64), probs[mine].cpu().numpy().astype(np.float32))
        return spikes, t1 - t0, time.perf_counter() - t1

    if parallel_chunks:
        return _detect_in_parallel_chunks(model, jobs, read, on_device, sort, threads, progress_bar)
    # on a GPU the CPU is free while the network runs: a read-ahead thread filtering there uses every thread
    ahead_threads = threads if device.type != "cpu" else 1
    out = ([], [], [], [])

    def read_ahead(index: int) -> bool:
        return prefetch and index < len(jobs)

    # with prefetch, the next chunk is read and preprocessed in a thread while the network runs on this one
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="esort-read") as reader:
        pending = reader.submit(read, jobs[0], ahead_threads) if read_ahead(0) else None
        for i, job in enumerate(tqdm(jobs, desc="esort inference", unit="chunk", disable=not progress_bar)):
            t0 = time.perf_counter()
            # a chunk not read ahead is read now, with every thread (nothing else runs meanwhile)
            block_start, block = pending.result() if pending is not None else read(job, threads)
            pending = reader.submit(read, jobs[i + 1], ahead_threads) if read_ahead(i + 1) else None
            traces = on_device(block)
            read_s = time.perf_counter() - t0
            spikes, network_s, postprocessing_s = sort(job, block_start, traces)
            _add(out, timings, spikes, read_s, network_s, postprocessing_s)
    return _collected(*out, timings)


def _collected(out_samples: list, out_segments: list, out_units: list, out_probs: list,
               timings: dict) -> DetectedSpikes:
    """The chunks' spikes as one ``DetectedSpikes``, sorted by segment, time, unit."""
    if not out_samples:
        empty = np.zeros(0, dtype=np.int64)
        return DetectedSpikes(empty, empty, empty, np.zeros(0, dtype=np.float32), timings)
    sample_index, segment_index, unit_index, probability = (
        np.concatenate(x) for x in (out_samples, out_segments, out_units, out_probs)
    )
    order = np.lexsort((unit_index, sample_index, segment_index))
    return DetectedSpikes(
        sample_index[order], segment_index[order], unit_index[order], probability[order], timings
    )


def _detect_in_parallel_chunks(model: ESortModel, jobs: list[tuple[int, int, int]], read, on_device, sort,
                               threads: int, progress_bar: bool) -> DetectedSpikes:
    """``detect_in_recording`` on CPU with ``threads`` workers, each sorting whole chunks on its own (``read`` with
    one thread, ``on_device``, then ``sort``: the network on one torch thread, and post-processing). Every core does
    both kinds of work, so neither waits for the other (reading ahead in one thread while the network runs on the
    others leaves the reader's core idle when filtering is the faster of the two). Timings are summed over the
    workers (thread-seconds), ``parallel_chunks`` is the number of workers."""
    model.folded_network()  # built once, before the workers share it

    def sort_chunk(job):
        t0 = time.perf_counter()
        block_start, block = read(job, 1)
        traces = on_device(block)
        read_s = time.perf_counter() - t0
        spikes, network_s, postprocessing_s = sort(job, block_start, traces)
        return spikes, read_s, network_s, postprocessing_s

    timings = dict(read_s=0.0, network_s=0.0, postprocessing_s=0.0, parallel_chunks=threads)
    out = ([], [], [], [])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # each worker's network on its own core
    try:
        with (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="esort-chunk") as pool,
              tqdm(total=len(jobs), desc="esort inference", unit="chunk", disable=not progress_bar) as bar):
            pending = deque()  # at most 2 chunks per worker in flight: memory bounded whatever the recording's length
            for job in jobs:
                pending.append(pool.submit(sort_chunk, job))
                if len(pending) >= 2 * threads:
                    _add(out, timings, *pending.popleft().result())
                    bar.update()
            while pending:
                _add(out, timings, *pending.popleft().result())
                bar.update()
    finally:
        torch.set_num_threads(previous)
    return _collected(*out, timings)


def _add(out: tuple, timings: dict, spikes: tuple, read_s: float, network_s: float, postprocessing_s: float) -> None:
    """Append a chunk's spikes to ``out`` (samples, segments, units, probabilities lists) and add its timings."""
    for values, part in zip(out, spikes):
        values.append(part)
    timings["read_s"] += read_s
    timings["network_s"] += network_s
    timings["postprocessing_s"] += postprocessing_s
