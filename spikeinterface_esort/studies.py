"""Robustness studies on generated ground truth: drift and noise.

``python -m spikeinterface_esort.studies drift --folder F`` sorts static, zigzag and bumps
recordings from ``generate_drifting_recording`` (same neurons) with esort: no drift handling,
motion correction, drift augmentation (``ESORT_DRIFT_OPTIONS``); ``... noise --folder F`` sorts recordings of growing noise with esort and
spykingcircus2. esort trains on ground-truth annotations of the first half; every sorter is
scored on the second half with ``compare_sorter_to_ground_truth``. Each prints a Markdown table
and writes ``results.json`` in its folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import spikeinterface_esort  # noqa: F401  (registers "esort")

from .datasets import DRIFT_MODES, generate_dataset, generate_drifting_dataset, sort_and_score

ESORT_DRIFT_OPTIONS = {
    "none": {"motion_correction": None, "drift_augmentation_um": 0.0},
    "motion_correction=dredge_fast": {"motion_correction": "dredge_fast", "drift_augmentation_um": 0.0},
    "drift_augmentation_um=20": {"motion_correction": None, "drift_augmentation_um": 20.0},
}


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if column == "well_detected":
        return f"{value}/{row['num_units']}"
    if column == "time_s":
        return f"{value:.1f}"
    if column in ("accuracy", "precision", "recall"):
        return f"{value:.3f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(rows: list[dict], first: list[str]) -> str:
    columns = first + ["accuracy", "precision", "recall", "well_detected", "time_s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _esort_params(recording, folder: Path) -> tuple[dict, int]:
    half_s = recording.get_total_duration() / 2.0
    params = dict(annotation_sorting_path=str(folder / "ground_truth"), train_duration_s=half_s)
    return params, int(round(half_s * recording.get_sampling_frequency()))


def drift_study(folder: Path, seed: int = 0, duration_s: float = 90.0, options: list[str] | None = None) -> list[dict]:
    rows = []
    options = list(ESORT_DRIFT_OPTIONS) if not options else options
    for mode in DRIFT_MODES:
        recording, ground_truth = generate_drifting_dataset(folder / mode, mode, duration_s=duration_s, seed=seed)
        params, start = _esort_params(recording, folder / mode)
        for option in options:
            extra = ESORT_DRIFT_OPTIONS[option]
            _, scores, _ = sort_and_score(
                "esort", recording, ground_truth, folder / mode / f"esort_{option}", start, **params, **extra
            )
            rows.append(dict(recording=mode, sorter=f"esort ({option})", **scores))
            print(rows[-1], flush=True)
    return rows


def noise_study(folder: Path, seed: int = 0, duration_s: float = 60.0, noise_levels=(5.0, 10.0, 20.0)) -> list[dict]:
    rows = []
    for noise in noise_levels:
        sub = folder / f"noise_{noise:g}uV"
        recording, ground_truth = generate_dataset(sub, 32, 10, duration_s, seed=seed, noise_level_uv=noise)
        params, start = _esort_params(recording, sub)
        for sorter, sorter_params in (("esort", params), ("spykingcircus2", {})):
            _, scores, _ = sort_and_score(sorter, recording, ground_truth, sub / sorter, start, **sorter_params)
            rows.append(dict(noise_uV=noise, sorter=sorter, **scores))
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.studies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("drift", "noise"))
    parser.add_argument("--folder", default="esort_studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", nargs="*", choices=list(ESORT_DRIFT_OPTIONS),
                        help="drift study: the esort options to run (default all)")
    args = parser.parse_args(argv)
    folder = Path(args.folder).absolute() / args.study
    if args.study == "drift":
        rows, first = drift_study(folder, args.seed, options=args.options), ["recording", "sorter"]
    else:
        rows, first = noise_study(folder, args.seed), ["noise_uV", "sorter"]
    # rows of earlier runs (other options) are kept; a row run again replaces its earlier self
    results_file = folder / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else []
    keys = {tuple(row[k] for k in first) for row in rows}
    rows = [row for row in previous if tuple(row[k] for k in first) not in keys] + rows
    results_file.write_text(json.dumps(rows, indent=2))
    print(_table(sorted(rows, key=lambda row: [row[k] for k in first]), first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
