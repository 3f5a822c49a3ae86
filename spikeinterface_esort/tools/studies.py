"""Studies on generated ground truth: drift, noise and model reuse.

``python -m spikeinterface_esort.tools.studies drift --folder F`` sorts static, zigzag and bumps
recordings from ``generate_drifting_recording`` (same neurons) with esort: no drift handling,
motion correction, drift augmentation (``ESORT_DRIFT_OPTIONS``); ``... noise --folder F`` sorts recordings of growing noise with esort and
spykingcircus2; ``... reuse --folder F`` applies a saved model to a second session of the same neurons
(see ``reuse_study``). esort trains on ground-truth annotations of the first half; every sorter is
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
    if column == "delta":
        return f"{value:+.4f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


SCORE_COLUMNS = ["accuracy", "precision", "recall", "well_detected", "time_s"]


def _table(rows: list[dict], first: list[str], scores: list[str] = SCORE_COLUMNS) -> str:
    columns = first + scores
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


def _sessions(folder: Path, seed: int, duration_s: float, num_units: int = 10):
    """Two recordings of the same neurons (same templates, generator seed ``seed``) on the same 32-channel
    probe, with new spike trains and noise in the second (seed + 1): a chronic implant's two sessions."""
    from spikeinterface.core import generate_ground_truth_recording, generate_templates
    from spikeinterface.core.generate import generate_unit_locations

    from .datasets import make_probe

    probe = make_probe("grid", 32)
    locations = generate_unit_locations(num_units, probe.contact_positions, seed=seed, margin_um=10.0, minimum_z=5.0,
                                        maximum_z=50.0, minimum_distance=20)
    templates = generate_templates(probe.contact_positions, locations, 30000.0, 1.0, 3.0, seed=seed, dtype="float32")
    sessions = []
    for i in (0, 1):
        sub = folder / f"session{i + 1}"
        recording, sorting = generate_ground_truth_recording(
            durations=[duration_s], sampling_frequency=30000.0, num_units=num_units, probe=probe, templates=templates,
            seed=seed + i,
        )
        recording = recording.save(folder=sub / "recording", overwrite=True, n_jobs=1, progress_bar=False)
        sorting = sorting.save(folder=sub / "ground_truth", overwrite=True)
        sessions.append((recording, sorting, sub))
    return sessions


def reuse_study(folder: Path, seed: int = 0, duration_s: float = 40.0, k: int = 10) -> list[dict]:
    """A model trained on session 1 (ground truth of its first half) sorts session 2 (same neurons and probe,
    new spike trains and noise) without annotations, and after a few-shot fine-tune on k spikes per unit of
    session 2's first half; compared with training on those k spikes from scratch. Scored on session 2's
    second half."""
    import time

    from .datasets import held_out_performance, summarise
    from ..model import ESortModel

    (rec1, gt1, sub1), (rec2, gt2, sub2) = _sessions(folder, seed, duration_s)
    half_s, start = duration_s / 2, rec2.get_num_samples() // 2
    rows = []
    _, scores, _ = sort_and_score("esort", rec1, gt1, sub1 / "esort", start,
                                  annotation_sorting_path=str(sub1 / "ground_truth"), train_duration_s=half_s)
    rows.append(dict(recording="session 1", model="trained on session 1 (all annotations of the first half)", **scores))
    model = ESortModel.load(sub1 / "esort")

    def score(sorting, name, seconds):
        rows.append(dict(recording="session 2", model=name, **summarise(held_out_performance(sorting, gt2, start)),
                         time_s=seconds))
        print(rows[-1], flush=True)

    t0 = time.perf_counter()
    score(model.sort(rec2), "session 1 model, no new annotation", time.perf_counter() - t0)
    t0 = time.perf_counter()
    tuned = model.fine_tune(rec2, gt2, folder=sub2 / "fine_tuned", train_duration_s=half_s, annotated_spikes_per_unit=k)
    score(tuned.sort(rec2), f"session 1 model fine-tuned on {k} spikes per unit", time.perf_counter() - t0)
    _, scores, _ = sort_and_score("esort", rec2, gt2, sub2 / "scratch", start, annotation_sorting_path=str(sub2 / "ground_truth"),
                                  train_duration_s=half_s, annotated_spikes_per_unit=k)
    rows.append(dict(recording="session 2", model=f"from scratch on {k} spikes per unit", **scores))
    print(rows[-1], flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m spikeinterface_esort.tools.studies``."""
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.studies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("drift", "noise", "reuse"))
    parser.add_argument("--folder", default="esort_studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", nargs="*", choices=list(ESORT_DRIFT_OPTIONS),
                        help="drift study: the esort options to run (default all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).absolute() / args.study
    if args.study == "drift":
        rows, first = drift_study(folder, args.seed, options=args.options), ["recording", "sorter"]
    elif args.study == "reuse":
        rows, first = reuse_study(folder, args.seed), ["recording", "model"]
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
