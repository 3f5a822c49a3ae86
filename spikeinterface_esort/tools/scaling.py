"""Cost against length: wall time per step and peak memory of sorters on the first minutes of a recording.

    python -m spikeinterface_esort.tools.scaling --preset long --lengths 120 300 600 --sorters esort spykingcircus2 \
        --folder esort_scaling

For each length L (s) the first L seconds of the preset's saved recording (a lazy slice, nothing copied) are
sorted by each sorter through the benchmark (``python -m spikeinterface_esort.tools.benchmark``), one fresh Python
process per sorter and length, so that each peak RSS (the process and its workers, sampled every 0.2 s) is that
run's alone. Every run is scored after the annotation window that esort's defaults take on L seconds. Written to
``folder``: ``scaling.csv`` (one row per length and sorter: wall time, esort's steps, peak RSS, held-out accuracy),
``scaling.md`` (the table, and for each sorter a straight-line fit of wall time against length: a fixed cost plus
seconds per minute of recording) and ``scaling.png`` (wall time and peak RSS against length). Each length's
benchmark folder (``folder/length_<L>s``) keeps the sorters' outputs; a sorter already run there is not run again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..annotation import default_train_duration_s, default_train_pieces
from .benchmark import PRESETS, preset_data


def length_data(recording, truth, folder: Path, length_s: float) -> tuple[Path, Path, float, int]:
    """The first ``length_s`` seconds of ``recording`` as a JSON file of its lazy slice and the truth's spikes
    there, saved under ``folder``; with the annotation window esort's defaults take on that length (s, pieces)."""
    folder.mkdir(parents=True, exist_ok=True)
    end = int(round(length_s * recording.get_sampling_frequency()))
    if end > recording.get_num_samples(0):
        raise ValueError(f"length {length_s:g} s is longer than the recording ({recording.get_total_duration():g} s)")
    recording_file, truth_folder = folder / "recording.json", folder / "ground_truth"
    if not recording_file.is_file():
        recording.frame_slice(0, end).dump_to_json(recording_file)
    if not truth_folder.is_dir():
        truth.frame_slice(0, end).save(folder=truth_folder)
    window_s = default_train_duration_s(length_s)
    return recording_file, truth_folder, window_s, default_train_pieces(length_s, window_s)


def run_benchmark_process(recording_file: Path, truth_folder: Path, annotation_s: float, pieces: int, folder: Path,
                          sorters: list[str], n_jobs: int) -> pd.DataFrame:
    """The benchmark's command in a fresh process (sorters already run in ``folder`` are only scored again): its
    results table, one row per sorter."""
    command = [sys.executable, "-m", "spikeinterface_esort.tools.benchmark", "--recording", str(recording_file),
               "--ground-truth", str(truth_folder), "--annotation-s", f"{annotation_s:g}",
               "--annotation-pieces", str(pieces), "--folder", str(folder),
               "--sorters", *sorters, "--n-jobs", str(n_jobs)]
    subprocess.run(command, check=True)
    return pd.read_csv(folder / "results.csv").set_index("case")


def fit_lines(table: pd.DataFrame) -> pd.DataFrame:
    """Per sorter, wall time = fixed (s) + slope (s per minute of recording), least squares over the lengths."""
    rows = []
    for sorter, part in table.groupby("sorter", sort=False):
        if part["length_s"].nunique() < 2:
            continue
        slope, fixed = np.polyfit(part["length_s"] / 60.0, part["run_time_s"], 1)
        rows.append(dict(sorter=sorter, fixed_s=fixed, s_per_minute=slope,
                         x_real_time=60.0 / slope if slope > 0 else float("inf")))
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, fits: pd.DataFrame) -> str:
    header = ["length (s)", "sorter", "wall time (s)", "esort: annotation / training / inference (s)",
              "peak RSS (MB)", "held-out accuracy"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict(orient="records"):
        steps = ""
        if pd.notna(row.get("training_s")):
            steps = f"{row['annotation_s']:.1f} / {row['training_s']:.1f} / {row['inference_s'] + row['postprocessing_s']:.1f}"
        lines.append(f"| {row['length_s']:g} | {row['sorter']} | {row['run_time_s']:.1f} | {steps} | "
                     f"{row['peak_rss_mb']:.0f} | {row['accuracy']:.3f} |")
    text = "\n".join(lines) + "\n"
    if len(fits):
        text += "\nWall time against length, least-squares line:\n\n| sorter | fixed cost (s) | s per minute of recording | x real time (slope) |\n| --- | --- | --- | --- |\n"
        for row in fits.to_dict(orient="records"):
            text += f"| {row['sorter']} | {row['fixed_s']:.1f} | {row['s_per_minute']:.1f} | {row['x_real_time']:.1f} |\n"
    return text


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for sorter, part in table.sort_values("length_s").groupby("sorter", sort=False):
        minutes = part["length_s"] / 60.0
        left.plot(minutes, part["run_time_s"], marker="o", label=sorter)
        right.plot(minutes, part["peak_rss_mb"], marker="o", label=sorter)
    left.set_ylabel("wall time of run_sorter (s)")
    right.set_ylabel("peak RSS, process and workers (MB)")
    for ax in (left, right):
        ax.set_xlabel("recording length (min)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="long", choices=sorted(PRESETS))
    parser.add_argument("--lengths", nargs="+", type=float, default=[120.0, 300.0, 600.0], help="seconds")
    parser.add_argument("--sorters", nargs="+", default=["esort", "spykingcircus2"], help="benchmark cases")
    parser.add_argument("--folder", default="esort_scaling")
    parser.add_argument("--n-jobs", type=int, help="CPU jobs for every sorter (default: all cores)")
    parser.add_argument("--only-existing", action="store_true",
                        help="run nothing new: tabulate the lengths and sorters already run in --folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).absolute()
    n_jobs = args.n_jobs or os.cpu_count() or 1
    data, _ = preset_data(args.preset, folder, max(args.lengths))
    rows = []
    for length_s in args.lengths:
        length_folder = folder / f"length_{length_s:g}s"
        recording_file, truth_folder, annotation_s, pieces = length_data(data.recording, data.truth, length_folder, length_s)
        done = []
        for sorter in args.sorters:
            if args.only_existing and not (length_folder / "study" / "results" / sorter / "run_time.pickle").is_file():
                print(f"{length_s:g} s: {sorter} not run yet: left out (--only-existing)", flush=True)
                continue
            print(f"{length_s:g} s: {sorter} ...", flush=True)
            # one sorter per process, so that its peak RSS is its own
            run_benchmark_process(recording_file, truth_folder, annotation_s, pieces, length_folder, [sorter], n_jobs)
            done.append(sorter)
        if done:  # the length's folder ends with every sorter's table, time bins and plots together
            table = run_benchmark_process(recording_file, truth_folder, annotation_s, pieces, length_folder, done, n_jobs)
            rows += [dict(length_s=length_s, **table.loc[sorter].to_dict()) for sorter in done]
    table = pd.DataFrame(rows)
    fits = fit_lines(table)
    table.to_csv(folder / "scaling.csv", index=False)
    command = " ".join(["python -m spikeinterface_esort.tools.scaling"] + (sys.argv[1:] if argv is None else list(argv)))
    (folder / "scaling.md").write_text(f"Command: `{command}`\n\n" + markdown(table, fits))
    plot(table, folder / "scaling.png")
    print(markdown(table, fits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
