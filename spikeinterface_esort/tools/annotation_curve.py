"""Annotation curve: held-out accuracy against the annotation window's length, from scratch and from a backbone.

For each layout, a corpus recording no backbone was pretrained on (``datasets.corpus_spec``, its own seed) is sorted
through ``run_sorter`` with the first W s annotated (``train_duration_s`` = W), in three ways: from scratch
(``pretrained_weights=None``), from ``pretrained_weights="auto"`` with every layer trained (``freeze_layers="none"``),
and from ``"auto"`` with what transferred frozen (``"backbone"`` where the whole backbone transfers, else
``"temporal"``). Labels: the ground truth, or the default teacher (run once per window, by the scratch sort; the
others train on the labels it kept, ``sorter_output/training_annotations``). Every sort of a recording is scored on
the same held-out part, after the longest window, with ``compare_sorter_to_ground_truth``.

    python -m spikeinterface_esort.tools.annotation_curve --folder esort_annotation_curve --out docs

writes ``<out>/annotation_curve.csv``, ``annotation_curve.md`` (tables, annotation reduction) and
``annotation_curve.png``; ``--from-csv`` writes them again from earlier runs' csv files (several: one table set).
Annotation reduction = 1 - W* / (longest window), W* the window (linear interpolation) at which a pretrained start
first reaches scratch's accuracy at the longest window minus 0.005; the table also gives the window at which scratch
itself first gets there (where that is short, the curve leaves no room for a saving).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import generate_corpus_dataset, sort_and_score
from .settings_study import params_argument

ARMS = ("scratch", "fine-tuned", "frozen")
TOLERANCE = 0.005


def _frozen_layers(recording) -> str:
    """'backbone' where 'auto' finds a backbone with the recording's contact positions, else 'temporal'."""
    from ..transfer import layout_order, resolve_backbone

    locations = recording.get_channel_locations()
    backbone = resolve_backbone("auto", locations, recording.get_sampling_frequency())
    whole = backbone is not None and layout_order(backbone.channel_locations, locations) is not None
    return "backbone" if whole else "temporal"


def run(folder: Path, layouts: list[tuple[str, int]], windows_s: list[float], labels: list[str], duration_s: float,
        first_seed: int, seeds: list[int], extra_params: dict | None = None) -> pd.DataFrame:
    """Every arm on every layout, labels, window and seed; ``extra_params`` (esort parameters) apply to every arm."""
    import spikeinterface_esort  # noqa: F401  (registers esort)

    rows = []
    for i, (layout, channels) in enumerate(layouts):
        name = f"{layout}{channels}"
        recording, ground_truth, spec = generate_corpus_dataset(folder / name / "data", layout, channels,
                                                                first_seed + i, duration_s, n_jobs=2)
        held_out = int(round(max(windows_s) * recording.get_sampling_frequency()))
        frozen = _frozen_layers(recording)
        for label in labels:
            for window in windows_s:
                for seed in seeds:
                    teacher_labels = None
                    for arm in ARMS:
                        run_folder = folder / name / f"{label}_{window:g}s_{arm}_seed{seed}"
                        params = dict(extra_params or {}, train_duration_s=float(window), seed=seed,
                                      pretrained_weights=None if arm == "scratch" else "auto",
                                      freeze_layers={"scratch": "auto", "fine-tuned": "none", "frozen": frozen}[arm])
                        if label == "ground truth":
                            params["annotation_sorting_path"] = str(folder / name / "data" / "ground_truth")
                        elif teacher_labels is not None:
                            params["annotation_sorting_path"] = teacher_labels
                        _, scores, _ = sort_and_score("esort", recording, ground_truth, run_folder, held_out, **params)
                        if label == "teacher" and teacher_labels is None:
                            teacher_labels = str(run_folder / "sorter_output" / "training_annotations")
                        timings = json.loads((run_folder / "sorter_output" / "timings.json").read_text())
                        rows.append(dict(layout=name, labels=label, window_s=float(window), arm=arm, seed=seed,
                                         frozen=frozen if arm == "frozen" else "", training_s=timings["training"],
                                         **scores))
                        print(f"{name} {label} {window:g} s {arm} seed {seed}: accuracy {scores['accuracy']:.3f}, "
                              f"training {timings['training']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def annotation_reduction(curve: pd.Series, target: float) -> tuple[float | None, str]:
    """(W*, words): the first window (s, linear interpolation between windows) at which ``curve`` (accuracy indexed by
    window) reaches ``target``; None when it never does."""
    windows, values = curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)
    if values[0] >= target:
        return float(windows[0]), f"at most {windows[0]:g} s"
    for (w0, a0), (w1, a1) in zip(zip(windows, values), zip(windows[1:], values[1:])):
        if a1 >= target:
            return float(w0 + (target - a0) / (a1 - a0) * (w1 - w0)), ""
    return None, "not reached"


def summary(results: pd.DataFrame) -> str:
    """Markdown: per layout and labels, accuracy and training time by window and start, and the reduction."""
    parts = []
    for (layout, label), group in results.groupby(["layout", "labels"], sort=False):
        mean = group.groupby(["window_s", "arm"])[["accuracy", "training_s"]].mean().unstack("arm")
        longest = float(mean.index.max())
        scratch_best = float(mean.loc[longest, ("accuracy", "scratch")])
        lines = [f"### {layout}, {label} annotations", "",
                 "| window (s) | " + " | ".join(f"{a}: accuracy" for a in ARMS) + " | "
                 + " | ".join(f"{a}: training (s)" for a in ARMS) + " |",
                 "| --- " * (1 + 2 * len(ARMS)) + "|"]
        for window, row in mean.iterrows():
            lines.append(f"| {window:g} | " + " | ".join(f"{row[('accuracy', a)]:.3f}" for a in ARMS) + " | "
                         + " | ".join(f"{row[('training_s', a)]:.1f}" for a in ARMS) + " |")
        lines.append("")
        target = scratch_best - TOLERANCE
        for arm in ARMS:
            w, words = annotation_reduction(mean[("accuracy", arm)], target)
            if w is None:
                lines.append(f"- {arm}: never reaches scratch at {longest:g} s - {TOLERANCE} ({target:.3f}): no reduction")
                continue
            reduction = 1 - w / longest
            at_most = " (at least: reached at the shortest window)" if words else ""
            if arm == "scratch":  # where scratch itself already gets there, a pretrained start cannot show a saving
                lines.append(f"- scratch itself reaches {target:.3f} at {w:.1f} s ({reduction:.0%} shorter than "
                             f"{longest:g} s{at_most})")
                continue
            nearest = mean.index[mean.index >= w - 1e-9].min()
            ratio = float(mean.loc[nearest, ("training_s", arm)]) / float(mean.loc[longest, ("training_s", "scratch")])
            lines.append(f"- {arm}: reaches {target:.3f} at {w:.1f} s: annotation reduction {reduction:.0%}{at_most}; "
                         f"training time at {nearest:g} s / scratch's at {longest:g} s: {ratio:.2f}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(results.groupby(["layout", "labels"], sort=False))
    columns = min(3, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, ((layout, label), group) in zip(axes.flat, groups):
        mean = group.groupby(["window_s", "arm"])["accuracy"].mean().unstack("arm")
        for arm in ARMS:
            ax.plot(mean.index, mean[arm], marker="o", label=arm)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(mean.index, [f"{w:g}" for w in mean.index])
        ax.set_title(f"{layout}, {label}")
        ax.set_xlabel("annotation window (s)")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _layout(text: str) -> tuple[str, int]:
    layout, _, channels = text.partition(":")
    return layout, int(channels)


def main(argv: list[str] | None = None) -> None:
    from .datasets import LAYOUTS

    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.annotation_curve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="esort_annotation_curve", help="recordings and sorts")
    parser.add_argument("--out", default="esort_annotation_curve", help="where the csv, table and plot go")
    parser.add_argument("--layouts", nargs="+", type=_layout, default=[("grid", 32), ("2col", 64)],
                        help=f"layout:channels, layouts {LAYOUTS}")
    parser.add_argument("--windows", nargs="+", type=float, default=[5.0, 10.0, 20.0, 40.0], help="s annotated")
    parser.add_argument("--labels", nargs="+", choices=("ground truth", "teacher"), default=["ground truth"])
    parser.add_argument("--duration", type=float, default=60.0, help="s per recording (after the longest window: "
                                                                     "held out)")
    parser.add_argument("--recording-seed", type=int, default=2000, help="the first layout's corpus seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--set", type=params_argument, default={}, metavar="NAME=VALUE,...",
                        help="esort parameters for every arm, e.g. 'head_init=random,epochs=6' (values read as JSON)")
    parser.add_argument("--from-csv", nargs="+", type=Path, default=None, metavar="CSV",
                        help="sort nothing: write the tables and plot of earlier runs' annotation_curve.csv files")
    args = parser.parse_args(argv)
    if args.duration <= max(args.windows):
        parser.error("--duration must exceed the longest window: what follows it is held out")
    folder, out = Path(args.folder), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        results = pd.concat([pd.read_csv(path) for path in args.from_csv], ignore_index=True)
    else:
        results = run(folder, args.layouts, sorted(args.windows), args.labels, args.duration, args.recording_seed,
                      args.seeds, args.set)
    results.to_csv(out / "annotation_curve.csv", index=False)
    command = "python -m spikeinterface_esort.tools.annotation_curve " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    (out / "annotation_curve.md").write_text(f"Command: `{command}`\n\n" + summary(results), encoding="utf8")
    plot(results, out / "annotation_curve.png")
    print(summary(results))


if __name__ == "__main__":
    main()
