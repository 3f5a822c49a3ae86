"""Throughput benchmark: how fast esort's inference and post-processing run, per stride and precision.

    python -m spikeinterface_esort.tools.throughput --channels 64 384 --strides 1 2 4 --dtypes float32 auto --duration 20

For each channel count and path (``inference_stride``, ``inference_dtype``, ``spatial_radius_um`` with
``--spatial-radii``), in a fresh process (so that
peak memory is its own): a generated recording (saved binary, 30 kHz) is preprocessed as esort does
(bandpass + common median reference, with ``--filter-methods``, default the sorter's) and a network with random weights (``units`` = channels / 2) is run
over it chunk by chunk with ``detect_in_recording``. Printed: real-time factor (seconds of recording per
second of compute) of the network, of post-processing, of both, and of the whole inference step
(reading, filtering, network, post-processing), the time spent reading the traces (per second of recording:
with chunks sorted in turn, the wait for them, with ``--no-prefetch`` the whole cost of reading and filtering;
with chunks sorted in parallel, the workers' reading time summed), how the chunks were sorted (``--schedules``),
and the peak resident memory of the process. With chunks sorted in parallel, the network and post-processing
figures are per worker (summed over the workers).
``--device cuda`` measures a GPU; there the FFT filter runs on the GPU (``--filter-on-device`` runs it with
torch on a CPU too, to compare).

``--accuracy`` adds, for each path and each recording of ``--datasets`` (names in ``ACCURACY_DATASETS``), the
held-out accuracy of a full ``run_sorter("esort")`` (trained on the first half with ground truth; the same seed, so the same
network; thresholds chosen with the path), its difference from the exact path (stride 1, float32), the
worst unit's difference, and how far spike times move from the exact ones. ``--skip-throughput`` runs
only that.

``--spatial-radii none 100`` adds the paths with the network's local spatial filter (``spatial_radius_um``):
throughput with random weights masked as a trained local filter is, accuracy from networks trained that way.

``--precision-check`` only tells whether this CPU computes bfloat16 natively and times the network's spatial
product in float32, bfloat16 (where bfloat16 is emulated, about 100x slower: esort refuses it there) and int8
(quantisation included), with the error of each against float64.

``--memory 60 600 3600`` measures instead one path (the first channel count, stride and dtype given) over
recordings of those durations, generated chunk by chunk while esort reads them (nothing written to disk):
peak memory against recording length.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..parameters import INFERENCE_DTYPES, PARAMETERS_BY_NAME


def measure(folder: Path, channels: int, stride: int, duration_s: float, device: str, threads: int,
            dtype: str = "float32", prefetch: bool = True, lazy: bool = False, filter_method: str | None = None,
            filter_on_device: bool | None = None, spatial_radius_um: float | None = None,
            schedule: str = "default") -> dict:
    """One configuration, in this process. ``lazy``: the recording is generated chunk by chunk as it is read
    (nothing saved; its generation counts in the inference step), for long recordings. ``filter_on_device``:
    as ``detect_in_recording``'s (default: on a GPU with the FFT filter). ``spatial_radius_um``: the network's
    local spatial filter (None: dense). ``schedule``: "default" (the sorter's: on a CPU with several threads,
    chunks sorted in parallel) or "read_ahead" (chunks in turn, the next one read ahead while the network runs
    with every thread)."""
    import numpy as np
    import torch

    from .datasets import generate_dataset
    from ..device import resolve_device
    from ..inference import detect_in_recording, filters_on_device
    from ..model import ESortModel
    from ..network import ESortNetwork, network_window_samples
    from ..parameters import default_params
    from ..postprocessing import smoothing_taps
    from ..preprocessing import preprocess

    torch.set_num_threads(threads)
    if lazy:
        from spikeinterface.core import generate_ground_truth_recording

        from .datasets import make_probe

        recording, _ = generate_ground_truth_recording(
            durations=[duration_s], num_channels=channels, num_units=max(10, channels // 8),
            probe=make_probe("grid", channels), noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"), seed=0,
        )
    else:
        recording, _ = generate_dataset(folder / f"rec{channels}", channels, max(10, channels // 8), duration_s, seed=0)
    params = default_params()
    params["filter_method"] = filter_method or params["filter_method"]
    fs = recording.get_sampling_frequency()
    units = channels // 2
    torch.manual_seed(0)
    network = ESortNetwork(channels, network_window_samples(params["window_ms"], fs), units,
                           spatial_radius_um=spatial_radius_um)
    network.set_channel_locations(recording.get_channel_locations())
    model = ESortModel(
        network, fs, recording.channel_ids, recording.get_channel_locations(), np.ones(channels), np.arange(units),
        smoothing_taps(params["smoothing_ms"], fs), thresholds=np.full(units, 0.9), params=dict(inference_dtype=dtype),
    ).to(resolve_device(device))
    preprocessed = preprocess(recording, params)
    if filter_on_device is None:
        filter_on_device = filters_on_device(preprocessed, model.device)
    t0 = time.perf_counter()
    detected = detect_in_recording(model, preprocessed, chunk_size=int(fs), progress_bar=False, stride=stride,
                                   prefetch=prefetch, filter_on_device=filter_on_device,
                                   parallel_chunks=False if schedule == "read_ahead" else None)
    wall = time.perf_counter() - t0
    seconds = recording.get_total_duration()
    t = detected.timings
    return dict(
        channels=channels, units=units, stride=stride, dtype=dtype, spatial_radius_um=spatial_radius_um,
        spatial_weights_per_feature=network.num_channels if spatial_radius_um is None
        else float(network.spatial_mask.sum(1).mean()), filter_method=params["filter_method"],
        filter_on_device=bool(filter_on_device),
        device=str(model.device), threads=threads,
        prefetch=prefetch, lazy=lazy, parallel_chunks=int(t.get("parallel_chunks", 0)),
        duration_s=seconds,
        rtf_network=seconds / t["network_s"], rtf_postprocessing=seconds / t["postprocessing_s"],
        rtf_network_and_postprocessing=seconds / (t["network_s"] + t["postprocessing_s"]),
        rtf_inference=seconds / wall, read_s=t["read_s"], network_s=t["network_s"],
        postprocessing_s=t["postprocessing_s"], wall_s=wall, spikes=int(len(detected.sample_index)),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


ACCURACY_DATASETS = {  # name: (channels, units, duration_s, seed, layout)
    "64ch-30u-60s": (64, 30, 60.0, 0, "grid"),
    "8ch-4u-12s": (8, 4, 12.0, 3, "grid"),
    "np1-384ch-64u-40s": (384, 64, 40.0, 0, "np1"),  # the benchmark's np1 preset recording
}


def accuracy_by_path(folder: Path, paths: list[tuple[int, str, float | None]], datasets: list[str], threads: int) -> list[dict]:
    """Held-out accuracy of full ``run_sorter("esort")`` runs per path (stride, dtype, spatial radius) against the
    exact one (stride 1, float32, dense): trained on the ground truth of the first half with the same seed (the
    same network, for the dense paths), thresholds chosen with the path, as a user gets it; scored on the second
    half."""
    import spikeinterface_esort  # noqa: F401  (registers "esort")

    from .datasets import generate_dataset, sort_and_score

    rows = []
    for name in datasets:
        channels, units, duration_s, seed, layout = ACCURACY_DATASETS[name]
        sub = folder / "accuracy" / name
        recording, ground_truth = generate_dataset(sub, channels, units, duration_s, seed=seed, layout=layout)
        start = int(duration_s / 2 * recording.get_sampling_frequency())
        sortings, per_unit, dataset_rows = [], [], []
        for stride, dtype, radius in paths:
            out = sub / (f"esort_stride{stride}_{dtype}" + ("" if radius is None else f"_radius{radius:g}"))
            sorting, scores, performance = sort_and_score(
                "esort", recording, ground_truth, out, start, annotation_sorting_path=str(sub / "ground_truth"),
                train_duration_s=duration_s / 2, inference_stride=stride, inference_dtype=dtype,
                spatial_radius_um=radius, job_kwargs=dict(n_jobs=threads),
            )
            timings = json.loads((out / "sorter_output" / "timings.json").read_text())
            dataset_rows.append(dict(dataset=name, stride=stride, dtype=dtype, spatial_radius_um=radius,
                                     training_s=timings.get("window", 0.0) + timings["training"],
                                     inference_s=timings["inference"],
                                     rtf_inference_step=recording.get_total_duration() / timings["inference"], **scores))
            sortings.append(sorting)
            per_unit.append(performance["accuracy"])
            print(dataset_rows[-1], flush=True)
        for row, sorting, unit_accuracy in zip(dataset_rows, sortings, per_unit):
            row["accuracy_delta"] = row["accuracy"] - dataset_rows[0]["accuracy"]
            row["worst_unit_delta"] = float((unit_accuracy - per_unit[0]).min())
            row.update(timing_error(sortings[0], sorting))
        rows += dataset_rows
    return rows


def timing_error(reference, other, max_samples: int = 12) -> dict:
    """How far ``other``'s spike times are from ``reference``'s (same unit ids), over spikes with a reference
    spike of the same unit within ``max_samples``: fraction equal, median, mean and 95th percentile (samples)."""
    import numpy as np

    from ..validation import nearest_index

    errors = []
    for unit_id in reference.unit_ids:
        ref, times = reference.get_unit_spike_train(unit_id), other.get_unit_spike_train(unit_id)
        if len(ref) == 0 or len(times) == 0:
            continue
        distance = np.abs(ref[nearest_index(ref, times)] - times)
        errors.append(distance[distance <= max_samples])
    errors = np.concatenate(errors) if errors else np.zeros(0)
    if errors.size == 0:
        return dict(time_equal_fraction=float("nan"), time_error_median=float("nan"),
                    time_error_mean=float("nan"), time_error_p95=float("nan"))
    return dict(
        time_equal_fraction=float(np.mean(errors == 0)), time_error_median=float(np.median(errors)),
        time_error_mean=float(errors.mean()), time_error_p95=float(np.percentile(errors, 95)),
    )


def _child(folder: Path, args, channels: int, stride: int, dtype: str, duration: float, lazy: bool = False,
           filter_method: str | None = None, radius: float | None = None, schedule: str = "default") -> dict:
    """``measure`` in a fresh process (so that its peak memory is its own)."""
    command = [sys.executable, "-m", "spikeinterface_esort.tools.throughput", "--one", str(channels), str(stride), dtype,
               "--spatial-radii", "none" if radius is None else f"{radius:g}",
               "--duration", str(duration), "--device", args.device, "--threads", str(args.threads),
               "--folder", str(folder), "--filter-methods", filter_method or args.filter_methods[0],
               "--schedules", schedule]
    command += ["--no-prefetch"] if args.no_prefetch else []
    command += ["--lazy"] if lazy else []
    command += ["--filter-on-device"] if args.filter_on_device else []
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_by_duration(folder: Path, args) -> int:
    """Peak RSS and real-time factor of one path over recordings of growing duration (generated while read)."""
    channels, stride, dtype, radius = args.channels[0], args.strides[0], args.dtypes[0], args.spatial_radii[0]
    rows = []
    for duration in args.memory:
        rows.append(_child(folder, args, channels, stride, dtype, duration, lazy=True, radius=radius))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.json").write_text(json.dumps(dict(memory=rows), indent=2))
        print(f"{duration:g} s: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch threads {args.threads}, device {args.device}; "
          f"{channels} channels, stride {stride}, {dtype}, {_radius_text(radius)} spatial filter, filter "
          f"{args.filter_methods[0]}; recording generated while read\n")
    print("| duration (s) | inference step incl. generation + filter (x RT) | wall (s) | spikes kept | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['duration_s']:g} | {r['rtf_inference']:.2f} | {r['wall_s']:.1f} | {r.get('spikes', '')} | "
              f"{r['peak_rss_mb']:.0f} |")
    return 0


def precision_check(channels: int, threads: int, windows: int = 256, repeats: int = 10) -> dict:
    """Whether this CPU computes bfloat16 natively, and the time of the network's spatial product (hidden 256 x
    channels * 16 features, over ``windows`` windows; the fastest of ``repeats``) per second of 30 kHz recording
    at stride 1 (s), in float32, bfloat16 and int8, with each one's error relative to the float64 product.

    int8 (``torch._int_mm``, int32 accumulation) is timed twice: the product alone, and as an int8 path would
    pay for it on every block: the features quantised (one scale per block), the product, the result scaled
    back to float32 (weights quantised once, one scale per hidden feature). None where torch has no CPU
    ``_int_mm``."""
    import torch

    from ..device import native_bfloat16

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, channels * 16, generator=generator) * 0.01
    features = torch.rand(channels * 16, windows, generator=generator)
    exact = weight.double() @ features.double()
    row = dict(channels=channels, windows=windows, threads=threads, native_bfloat16=native_bfloat16(torch.device("cpu")))

    def seconds_per_second(product) -> float:
        product()  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
        return best * 30000 / windows

    def relative_error(result: torch.Tensor) -> float:
        return float((result.double() - exact).norm() / exact.norm())

    for dtype in ("float32", "bfloat16"):
        w, x = weight.to(getattr(torch, dtype)), features.to(getattr(torch, dtype))
        row[f"spatial_{dtype}_s_per_s"] = seconds_per_second(lambda: w @ x)
        row[f"spatial_{dtype}_relative_error"] = relative_error(w @ x)

    def quantised(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric int8 values of ``x`` and their scale (one per row with ``dim=1``, else one in all)."""
        scale = (x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)) / 127.0
        return torch.round(x / scale).to(torch.int8), scale

    weight_int8, weight_scale = quantised(weight, dim=1)  # once, as a model's weights would be

    def int8_path() -> torch.Tensor:
        features_int8, feature_scale = quantised(features)  # every block
        return torch._int_mm(weight_int8, features_int8).float() * (weight_scale * feature_scale)

    try:
        features_int8, _ = quantised(features)
        row["spatial_int8_product_only_s_per_s"] = seconds_per_second(lambda: torch._int_mm(weight_int8, features_int8))
        row["spatial_int8_s_per_s"] = seconds_per_second(int8_path)
        row["spatial_int8_relative_error"] = relative_error(int8_path())
    except (AttributeError, RuntimeError, NotImplementedError):  # no CPU int8 product in this torch
        row.update(spatial_int8_product_only_s_per_s=None, spatial_int8_s_per_s=None, spatial_int8_relative_error=None)
    return row


def _paths(strides: list[int], dtypes: list[str], radii: list[float | None] = (None,)) -> list[tuple[int, str, float | None]]:
    """(stride, dtype, spatial radius) triples, the exact path (1, float32, dense) first."""
    paths = [(1, "float32", None)] + [(s, d, r) for r in radii for d in dtypes for s in strides]
    return list(dict.fromkeys(paths))


def _radius(text: str) -> float | None:
    """A ``--spatial-radii`` value: 'none' (the dense spatial filter) or a radius in um."""
    if text.lower() == "none":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a spatial radius must be 'none' or > 0 um, got {text}")
    return value


def _radius_text(radius: float | None) -> str:
    return "dense" if radius is None else f"{radius:g} um"


SCHEDULES = ("default", "read_ahead")


def _schedule_text(row: dict) -> str:
    """How a row's chunks were sorted, in words."""
    if row.get("parallel_chunks"):
        return f"{row['parallel_chunks']} in parallel"
    return "in turn, read ahead" if row.get("prefetch", True) else "in turn, read when needed"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m spikeinterface_esort.tools.throughput``."""
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 384])
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"], choices=INFERENCE_DTYPES,
                        help="inference_dtype values (auto: bfloat16 where --device computes it natively, else "
                             "float32; bfloat16 is refused where emulated; float16: GPU only)")
    parser.add_argument("--spatial-radii", type=_radius, nargs="+", default=[None], metavar="UM",
                        help="spatial_radius_um values ('none': the dense spatial filter, the default)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of recording per measure")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--filter-methods", nargs="+", default=[PARAMETERS_BY_NAME["filter_method"].default],
                        choices=PARAMETERS_BY_NAME["filter_method"].choices,
                        help="filter_method values to measure (the table only; --memory uses the first)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--folder", default="esort_throughput")
    parser.add_argument("--accuracy", action="store_true", help="also measure held-out accuracy per path")
    parser.add_argument("--datasets", nargs="+", default=["64ch-30u-60s", "8ch-4u-12s"], choices=list(ACCURACY_DATASETS),
                        help="recordings of the accuracy part")
    parser.add_argument("--skip-throughput", action="store_true", help="only the accuracy part")
    parser.add_argument("--no-prefetch", action="store_true", help="read each chunk only when the network needs it")
    parser.add_argument("--schedules", nargs="+", default=["default"], choices=SCHEDULES,
                        help="how chunks are sorted on CPU: 'default' (the sorter's: in parallel, one worker per "
                             "thread, each reading and running the network on its own chunk) and/or 'read_ahead' "
                             "(in turn, the next chunk read in a thread while the network runs with every thread)")
    parser.add_argument("--filter-on-device", action="store_true",
                        help="filter with torch on --device (the default on a GPU with the FFT filter; on a CPU, "
                             "to compare it with the numpy/scipy filter)")
    parser.add_argument("--memory", type=float, nargs="+", metavar="SECONDS",
                        help="instead of the table: peak memory and speed of one path (first of --channels, "
                             "--strides, --dtypes) on recordings of these durations, generated as they are read")
    parser.add_argument("--precision-check", action="store_true",
                        help="instead of the table: whether this CPU has native bfloat16, and the network's spatial "
                             "product timed in float32, bfloat16 and int8 (first of --channels)")
    parser.add_argument("--lazy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("CHANNELS", "STRIDE", "DTYPE"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..device import resolve_dtype

    args = build_parser().parse_args(argv)
    folder = Path(args.folder).absolute()
    if args.precision_check:
        row = precision_check(args.channels[0], args.threads)
        print(json.dumps(row))
        int8 = ("int8: not available in this torch" if row["spatial_int8_s_per_s"] is None else
                f"int8 {row['spatial_int8_s_per_s']:.3f} s with the features quantised and the result scaled back "
                f"({row['spatial_int8_product_only_s_per_s']:.3f} s the product alone), error "
                f"{row['spatial_int8_relative_error']:.1e}")
        print(f"{platform.processor() or platform.machine()}: native bfloat16 {'yes' if row['native_bfloat16'] else 'no'}; "
              f"spatial product of {row['channels']} channels per second of recording: float32 "
              f"{row['spatial_float32_s_per_s']:.3f} s (error {row['spatial_float32_relative_error']:.1e}), bfloat16 "
              f"{row['spatial_bfloat16_s_per_s']:.3f} s "
              f"({row['spatial_bfloat16_s_per_s'] / row['spatial_float32_s_per_s']:.2f}x float32's time, error "
              f"{row['spatial_bfloat16_relative_error']:.1e}); {int8}")
        return 0
    # as the sorter resolves them on this device ('auto'; emulated bfloat16 refused): one row per precision
    args.dtypes = list(dict.fromkeys(resolve_dtype("inference_dtype", d, torch.device(args.device)) for d in args.dtypes))

    if args.one:  # child process: one measure, printed as JSON
        channels, stride, dtype = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(measure(folder, channels, stride, args.duration, args.device, args.threads, dtype,
                                 not args.no_prefetch, args.lazy, args.filter_methods[0],
                                 True if args.filter_on_device else None, args.spatial_radii[0], args.schedules[0])))
        return 0
    if args.memory:
        return memory_by_duration(folder, args)

    paths = _paths(args.strides, args.dtypes, args.spatial_radii)
    rows = []
    for channels in [] if args.skip_throughput else args.channels:
        for filter_method in args.filter_methods:
            for stride, dtype, radius in paths:
                for schedule in args.schedules:
                    rows.append(_child(folder, args, channels, stride, dtype, args.duration, filter_method=filter_method,
                                       radius=radius, schedule=schedule))
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "throughput.json").write_text(json.dumps(dict(throughput=rows), indent=2))
                    print(f"{channels} channels, {filter_method}, stride {stride}, {dtype}, {_radius_text(radius)} "
                          f"spatial filter, chunks {_schedule_text(rows[-1])}: inference step "
                          f"{rows[-1]['rtf_inference']:.2f}x real time", flush=True)
    accuracy = accuracy_by_path(folder, paths, args.datasets, args.threads) if args.accuracy else []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "throughput.json").write_text(json.dumps(dict(throughput=rows, accuracy=accuracy), indent=2))

    print(f"\n{platform.processor() or platform.machine()}, torch threads {args.threads}, device {args.device}\n")
    if rows:
        print("| channels | units | device | filter | stride | dtype | spatial filter (channels per feature) | "
              "network (x RT) | post-processing (x RT) | "
              "network + post-processing (x RT) | inference step incl. read + filter (x RT) | "
              "read + filter (s per s) | chunks sorted | peak RSS (MB) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            filter_name = r["filter_method"] + (" on device" if r.get("filter_on_device") else "")
            print(f"| {r['channels']} | {r['units']} | {r['device']} | {filter_name} | {r['stride']} | {r['dtype']} | "
                  f"{_radius_text(r['spatial_radius_um'])} ({r['spatial_weights_per_feature']:.0f}) | "
                  f"{r['rtf_network']:.2f} | {r['rtf_postprocessing']:.1f} | {r['rtf_network_and_postprocessing']:.2f} | "
                  f"{r['rtf_inference']:.2f} | {r['read_s'] / r['duration_s']:.3f} | {_schedule_text(r)} | "
                  f"{r['peak_rss_mb']:.0f} |")
    if accuracy:
        print("\n| dataset | stride | dtype | spatial filter | held-out accuracy | delta vs exact | worst unit's delta | "
              "precision | recall | training (s) | inference step (x RT) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in accuracy:
            print(f"| {r['dataset']} | {r['stride']} | {r['dtype']} | {_radius_text(r['spatial_radius_um'])} | "
                  f"{r['accuracy']:.3f} | {r['accuracy_delta']:+.3f} | {r['worst_unit_delta']:+.3f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} | {r['training_s']:.1f} | {r['rtf_inference_step']:.2f} |")
        print("\n| dataset | stride | dtype | spatial filter | spike times equal to exact | median error | mean error | "
              "95th percentile |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in accuracy:
            print(f"| {r['dataset']} | {r['stride']} | {r['dtype']} | {_radius_text(r['spatial_radius_um'])} | "
                  f"{100 * r['time_equal_fraction']:.0f} % | "
                  f"{r['time_error_median']:g} samples | {r['time_error_mean']:.2f} samples | "
                  f"{r['time_error_p95']:g} samples |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
