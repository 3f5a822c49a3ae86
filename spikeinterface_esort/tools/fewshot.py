"""Few-shot experiment: held-out accuracy vs annotated spikes per unit, from scratch vs from a shipped backbone.

A target recording the pretraining never saw (a new generator seed: new neurons, new spike trains,
new noise) on the backbone's layout. For each k, esort is trained on the first k ground-truth spikes of
each unit in the first half (``annotated_spikes_per_unit=k``; k 'all' is every spike there), from scratch
and from the backbone, for several training seeds, through ``run_sorter``; each sort is scored on the
second half with ``compare_sorter_to_ground_truth``. Thresholds are 0.5 in every arm (few-shot training
uses no held-out annotations).

    python -m spikeinterface_esort.tools.fewshot --folder esort_fewshot --out docs

writes ``<out>/fewshot.csv``, ``fewshot.md`` (the table) and ``fewshot.png`` (the plot).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import generate_dataset, sort_and_score
from .settings_study import params_argument

ALL = 10**9


def run(folder: Path, backbone: str, ks: list, seeds: list[int], channels: int, units: int, duration_s: float,
        recording_seed: int, windows_per_spike: int, epochs: int, extra_params: dict | None = None) -> pd.DataFrame:
    """Every k, seed and start; ``extra_params`` (esort parameters) apply to every run."""
    import spikeinterface_esort  # noqa: F401  (registers esort)

    recording, ground_truth = generate_dataset(folder / "target", channels, units, duration_s, seed=recording_seed)
    half = recording.get_num_samples() // 2
    rows = []
    for k in ks:
        for seed in seeds:
            for init in ("scratch", "pretrained"):
                params = dict(
                    extra_params or {}, annotation_sorting_path=str(folder / "target" / "ground_truth"), train_duration_s=duration_s / 2,
                    annotated_spikes_per_unit=ALL if k == "all" else int(k), min_spikes_per_unit=1,
                    pretrained_weights=None if init == "scratch" else backbone, seed=seed,
                    windows_per_spike=windows_per_spike, epochs=epochs,
                )
                _, scores, _ = sort_and_score("esort", recording, ground_truth, folder / f"k{k}_{init}_seed{seed}", half, **params)
                rows.append(dict(k=str(k), init=init, seed=seed, **scores))
                print(f"k={k} {init} seed {seed}: accuracy {scores['accuracy']:.3f} ({scores['time_s']:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def summary_table(results: pd.DataFrame, ks: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Markdown-ready table, and the mean and standard deviation over seeds of held-out accuracy per k
    and initialisation."""
    stats = results.groupby(["k", "init"])["accuracy"].agg(["mean", "std"]).unstack("init")
    stats = stats.reindex([str(k) for k in ks])
    table = pd.DataFrame({
        "scratch": [f"{m:.3f} +- {s:.3f}" for m, s in zip(stats[("mean", "scratch")], stats[("std", "scratch")])],
        "pretrained": [f"{m:.3f} +- {s:.3f}" for m, s in zip(stats[("mean", "pretrained")], stats[("std", "pretrained")])],
        "gain (points)": [f"{(p - s) * 100:+.1f}" for p, s in zip(stats[("mean", "pretrained")], stats[("mean", "scratch")])],
        "relative gain": [f"{(p / s - 1) * 100:+.1f}%" if s > 0 else "n/a"
                          for p, s in zip(stats[("mean", "pretrained")], stats[("mean", "scratch")])],
    }, index=pd.Index(stats.index, name="k"))
    return table, stats


def annotation_reduction(stats: pd.DataFrame, numeric_ks: list[int]) -> list[str]:
    """For each k where training from scratch is measured, the smallest k' at which the pretrained network is
    at least as accurate (linear interpolation between measured k): the annotations saved, 1 - k'/k."""
    lines = []
    ks = np.asarray(numeric_ks, dtype=float)
    pre = np.asarray([stats.loc[str(k), ("mean", "pretrained")] for k in numeric_ks])
    for k in numeric_ks[1:]:
        target = stats.loc[str(k), ("mean", "scratch")]
        if pre[0] >= target:
            lines.append(f"k={k}: the pretrained network at k={numeric_ks[0]} already matches scratch "
                         f"({pre[0]:.3f} >= {target:.3f}): at least {(1 - numeric_ks[0] / k) * 100:.0f}% fewer annotations")
            continue
        above = np.flatnonzero(pre >= target)
        if len(above) == 0:
            lines.append(f"k={k}: the pretrained network never reaches scratch's {target:.3f}")
            continue
        j = above[0]
        k_eq = ks[j - 1] + (target - pre[j - 1]) * (ks[j] - ks[j - 1]) / (pre[j] - pre[j - 1])
        lines.append(f"k={k}: pretrained reaches scratch's {target:.3f} at k~{k_eq:.1f}: {(1 - k_eq / k) * 100:.0f}% fewer annotations")
    return lines


def plot(results: pd.DataFrame, ks: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(ks))
    for init, colour in (("scratch", "tab:gray"), ("pretrained", "tab:blue")):
        sub = results[results["init"] == init].groupby("k")["accuracy"]
        mean, std = sub.mean().reindex([str(k) for k in ks]), sub.std().reindex([str(k) for k in ks])
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=colour, label=init)
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlabel("annotated spikes per unit (k)")
    ax.set_ylabel("held-out accuracy (mean over units)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.fewshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="esort_fewshot")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--backbone", default="grid-32ch-30khz")
    parser.add_argument("--k", nargs="+", default=["3", "5", "10", "15", "30", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--recording-seed", type=int, default=900)
    parser.add_argument("--windows-per-spike", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", type=params_argument, default={}, metavar="NAME=VALUE,...",
                        help="esort parameters for every run, e.g. 'head_init=random' (values read as JSON)")
    parser.add_argument("--from-csv", action="store_true", help="rebuild the table and plot from <out>/fewshot.csv")
    args = parser.parse_args(argv)
    command = "python -m spikeinterface_esort.tools.fewshot " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    ks = [k if k == "all" else int(k) for k in args.k]
    out = Path(args.out)
    if args.from_csv:
        results = pd.read_csv(out / "fewshot.csv", dtype={"k": str})
        command = (out / "fewshot.md").read_text().splitlines()[0].removeprefix("Command: `").removesuffix("`")
    else:
        results = run(Path(args.folder), args.backbone, ks, args.seeds, args.channels, args.units, args.duration,
                      args.recording_seed, args.windows_per_spike, args.epochs, args.set)
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / "fewshot.csv", index=False)
    table, stats = summary_table(results, ks)
    numeric = [k for k in ks if k != "all"]
    times = results.groupby("init")["time_s"].mean()
    text = "\n".join([
        f"Command: `{command}`",
        "",
        f"Held-out accuracy (mean +- standard deviation over training seeds {args.seeds}):",
        "",
        table.to_markdown(),
        "",
        "Annotation reduction at equal accuracy:",
        "",
        *[f"- {line}" for line in annotation_reduction(stats, numeric)],
        "",
        "Mean wall time of one run_sorter (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()),
    ])
    (out / "fewshot.md").write_text(text + "\n", encoding="utf8")
    plot(results, ks, out / "fewshot.png")
    print(text)


if __name__ == "__main__":
    main()
