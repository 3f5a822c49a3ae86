"""Command line: ``python -m spikeinterface_esort demo`` and ``python -m spikeinterface_esort parameters``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    """Generate a ground-truth recording, sort it with esort, print held-out scores."""
    import spikeinterface_esort  # noqa: F401  (registers "esort")
    from spikeinterface_esort.tools.datasets import generate_dataset, sort_and_score

    folder = Path(args.folder).absolute()
    print(
        f"Generating a {args.duration:g} s, {args.channels}-channel, {args.units}-unit ground-truth recording "
        f"(seed {args.seed}) in {folder / 'data'} ..."
    )
    recording, ground_truth = generate_dataset(
        folder / "data", args.channels, args.units, args.duration, seed=args.seed
    )
    half_s = args.duration / 2.0
    params = dict(train_duration_s=half_s, seed=args.seed)
    if args.annotation == "ground_truth":
        params["annotation_sorting_path"] = str(folder / "data" / "ground_truth")
    else:
        params["annotation_sorter"] = args.annotation
    params.update(json.loads(args.params))

    start_frame = int(round(half_s * recording.get_sampling_frequency()))
    runs = [("esort", f"esort ({args.annotation} annotations)", params)] + [(name, name, {}) for name in args.compare]
    rows = []
    for sorter_name, label, sorter_params in runs:
        _, scores, _ = sort_and_score(sorter_name, recording, ground_truth, folder / sorter_name, start_frame, **sorter_params)
        rows.append((label, scores))

    print(f"\nScored on the held-out {args.duration - half_s:g} s against ground truth "
          "(spikeinterface compare_sorter_to_ground_truth):")
    print(f"{'sorter':40s} {'accuracy':>9s} {'precision':>9s} {'recall':>9s} {'acc>0.8':>8s} {'time (s)':>9s}")
    for label, s in rows:
        print(
            f"{label:40s} {s['accuracy']:9.3f} {s['precision']:9.3f} {s['recall']:9.3f} "
            f"{s['well_detected']:>3d}/{s['num_units']:<4d} {s['time_s']:9.1f}"
        )
    from spikeinterface_esort.jobs import run_summary

    timings = json.loads((folder / "esort" / "sorter_output" / "timings.json").read_text())
    print("\n" + run_summary(timings, recording.get_total_duration()))  # internal figures: timings.json, esort.log
    print(f"esort output folder: {folder / 'esort'}")
    return 0


def parameters(args: argparse.Namespace) -> int:
    from spikeinterface_esort.parameters import parameters_markdown

    sys.stdout.write(parameters_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="sort a generated ground-truth recording and print held-out scores")
    p.add_argument("--folder", default="esort_demo", help="where the data and outputs go (default: esort_demo)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--units", type=int, default=10)
    p.add_argument("--duration", type=float, default=40.0, help="seconds; esort trains on the first half")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--annotation", default="ground_truth",
        help="'ground_truth' (annotations from the generator) or a SpikeInterface sorter name (e.g. spykingcircus2)",
    )
    p.add_argument("--compare", nargs="*", default=[], help="other sorters to run and score side by side")
    p.add_argument("--params", default="{}", help="extra esort parameters as JSON")
    p.add_argument("--verbose", action="store_true", help="progress bars")
    p.set_defaults(func=demo)
    p = commands.add_parser("parameters", help="print the parameter table (Markdown)")
    p.set_defaults(func=parameters)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
