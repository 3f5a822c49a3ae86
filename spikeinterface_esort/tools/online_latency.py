"""Latency of online sorting: train esort on a generated recording, stream it at several chunk sizes and
compare each stream's spikes with the offline sort of the same samples.

    python -m spikeinterface_esort.tools.online_latency --folder esort_online --chunk-ms 1 5 10 50 100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ..device import torch_threads
from ..inference import DetectedSpikes
from ..model import ESortModel
from ..online import OnlineSorter, stream
from .datasets import generate_dataset


def main(argv: list[str] | None = None) -> None:
    """Latency benchmark: train esort on a generated recording, then stream it at several chunk sizes and
    compare with the offline sort."""
    import spikeinterface.sorters as ss


    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.online_latency", description=main.__doc__)
    parser.add_argument("--folder", default="esort_online")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="s; trained on the first half")
    parser.add_argument("--stream-s", type=float, default=10.0, help="s streamed (from the start)")
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[1.0, 5.0, 10.0, 50.0, 100.0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    recording, ground_truth = generate_dataset(folder / "dataset", args.channels, args.units, args.duration)
    import spikeinterface_esort  # noqa: F401  (registers esort)

    model_folder = folder / "esort"
    if not (model_folder / "sorter_output" / "model" / "model.json").is_file():
        ss.run_sorter("esort", recording, folder=model_folder, remove_existing_folder=True,
                      annotation_sorting_path=str(folder / "dataset" / "ground_truth"), train_duration_s=args.duration / 2)
    model = ESortModel.load(model_folder)
    fs = recording.get_sampling_frequency()
    num = int(args.stream_s * fs)
    traces = recording.get_traces(start_frame=0, end_frame=num, return_in_uV=False)
    with torch_threads(args.threads or os.cpu_count() or 1):
        offline = model.sort(recording.frame_slice(0, num))
        reference = offline.to_spike_vector()
        print(f"online sorting, {args.channels} channels, {fs:g} Hz, {args.stream_s:g} s streamed, "
              f"{len(reference)} offline spikes")
        print("| chunk (ms) | pushes | compute per push, mean (ms) | p99 (ms) | max (ms) | real-time factor | "
              "lookahead (ms) | worst latency (ms) | spikes equal to offline |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for chunk_ms in args.chunk_ms:
            sorter = OnlineSorter(model)
            chunk = max(1, int(round(chunk_ms * fs / 1000)))
            online, seconds = stream(sorter, traces, chunk)
            same = _equal_fraction(reference, online)
            p99 = float(np.percentile(seconds, 99)) * 1000
            worst = chunk_ms + sorter.lookahead_ms + float(seconds.max()) * 1000
            print(f"| {chunk_ms:g} | {len(seconds)} | {seconds.mean() * 1000:.2f} | {p99:.2f} | {seconds.max() * 1000:.2f} | "
                  f"{(len(traces) / fs) / seconds.sum():.2f} | {sorter.lookahead_ms:.2f} | {worst:.1f} | "
                  f"{same[0]}/{same[1]} |", flush=True)


def _equal_fraction(reference: np.ndarray, online: DetectedSpikes) -> tuple[int, int]:
    """(spikes present in both with the same sample and unit, spikes in the larger of the two)."""
    a = set(zip(reference["sample_index"].tolist(), reference["unit_index"].tolist()))
    b = set(zip(online.sample_index.tolist(), online.unit_index.tolist()))
    return len(a & b), max(len(a), len(b))


if __name__ == "__main__":
    main()
