"""Defaults chosen by measurement: esort's held-out accuracy and wall time for candidate settings, per preset.

    python -m spikeinterface_esort.tools.settings_study --folder esort_settings --presets small np1 drifting long \
        --candidates published defaults "inference_stride=4" --long-duration 180

For each benchmark preset (``benchmark.PRESETS``: the same saved recordings) and each candidate (a name in
``CANDIDATES``, or ``name=value`` pairs joined by commas applied over the defaults), esort runs through
``run_sorter`` trained on the ground truth of the preset's annotation window, and is scored on the held-out rest
with ``compare_sorter_to_ground_truth``. Ground-truth annotations keep the teacher's errors out of the comparison:
what changes between rows is the network's settings alone. Each row gives held-out accuracy, its difference from
the ``published`` candidate on the same preset (mean and worst unit), run_sorter's wall time and esort's training
and inference steps. ``--teacher-annotations`` trains every candidate on the annotations of esort's default
teacher instead (run once per preset on the annotation window, saved and shared, and curated as esort curates
its teacher's units unless the candidate sets ``annotation_curation``), as a user without ground truth would.
``--teacher-windows`` adds rows for the annotation window instead: esort with its defaults and the default teacher
on windows of the given lengths, on the ``long`` preset, scored after the longest window.
``long``'s first ``--long-duration`` seconds are another recording: they keep their own teacher run and runs
(``long/teacher_annotations_<L>s``, ``long/runs_<L>s``). Written to ``folder``: ``settings.csv`` and ``settings.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import pandas as pd

from ..annotation_curation import resolve_annotation_curation
from ..parameters import PUBLISHED_PARAMS, default_params

CANDIDATES = {
    "published": PUBLISHED_PARAMS,
    "defaults": {},
}


def candidate_params(candidate: str) -> dict:
    """A candidate's esort parameters: a name of ``CANDIDATES``, or ``name=value,name=value`` over the defaults
    (values read as JSON where they parse, e.g. ``inference_stride=4,spatial_radius_um=null``; commas inside
    brackets or braces belong to the value, e.g. ``annotation_curation={"merge_presets":["slay"],"remove_redundant":true}``)."""
    if candidate in CANDIDATES:
        return dict(CANDIDATES[candidate])
    params = {}
    for pair in _top_level_split(candidate):
        name, _, text = pair.partition("=")
        if name.strip() not in default_params():
            raise ValueError(f"candidate {candidate!r}: {name.strip()!r} is not an esort parameter")
        try:
            params[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[name.strip()] = text
    return params


def params_argument(text: str) -> dict:
    """argparse type of a ``--set name=value,...`` option: ``candidate_params(text)``, refused by argparse (a usage
    error naming the parameter) when a name is not an esort parameter."""
    try:
        return candidate_params(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas that are outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def sort_or_reuse(sorter_folder: Path, data, **params):
    """``datasets.sort_and_score`` of esort with ``params``, unless ``sorter_folder`` already holds a finished run
    with the same parameters (all of them, defaults included): then that run's sorting and wall time, scored."""
    from spikeinterface.sorters import read_sorter_folder

    from .datasets import held_out_performance, sort_and_score, summarise

    expected = json.loads(json.dumps(dict(default_params(), **params)))
    params_file, log_file = sorter_folder / "spikeinterface_params.json", sorter_folder / "spikeinterface_log.json"
    if (sorter_folder / "sorter_output" / "sorting").is_dir() and params_file.is_file() and log_file.is_file():
        log = json.loads(log_file.read_text())
        if json.loads(params_file.read_text())["sorter_params"] == expected and not log.get("error"):
            sorting = read_sorter_folder(sorter_folder, register_recording=False)
            performance = held_out_performance(sorting, data.truth, data.held_out_start_frame, data.excluded_frames)
            scores = dict(summarise(performance), time_s=float(log["run_time"]))
            print("  (already run with the same parameters: reused)", flush=True)
            return sorting, scores, performance
    return sort_and_score("esort", data.recording, data.truth, sorter_folder, data.held_out_start_frame,
                          data.excluded_frames, **params)


def _steps(sorter_folder: Path) -> dict:
    """esort's teacher, training (with thresholds) and inference (with post-processing) wall times (s)."""
    from .benchmark import _esort_steps

    steps = _esort_steps(sorter_folder, 0.0)
    return dict(annotation_s=steps["annotation_s"], training_s=steps["training_s"],
                inference_s=steps["inference_s"] + steps["postprocessing_s"])


def preset_recording(preset: str, folder: Path, long_duration_s: float | None):
    """The preset's saved recording (the ``long`` preset's first ``long_duration_s`` seconds, when given)."""
    from .benchmark import BenchmarkData, PRESETS, preset_data

    data, description = preset_data(preset, folder / preset)
    if preset == "long" and long_duration_s and long_duration_s < data.recording.get_total_duration():
        end = int(round(long_duration_s * data.recording.get_sampling_frequency()))
        annotation_s = PRESETS["long"].annotation_s(long_duration_s)
        data = BenchmarkData(data.recording.frame_slice(0, end), data.truth.frame_slice(0, end), data.truth_folder,
                             annotation_s, annotation_pieces=PRESETS["long"].annotation_pieces(long_duration_s, annotation_s))
        description += f"; its first {long_duration_s:g} s"
    return data, description


def teacher_annotations(data, folder: Path, n_jobs: int) -> tuple[Path, float]:
    """esort's default teacher run once on the preset's annotation window (its pieces end to end, as esort gives
    them to it), its spikes mapped back to the recording's frames and saved in ``folder`` (reused when there):
    annotations that every candidate learns from. Returns the sorting's folder and the teacher's run time (s)."""
    import time

    import numpy as np
    from spikeinterface.core import NumpySorting

    from ..annotation import run_annotation_sorter, training_window

    sorting_folder, time_file = folder / "sorting", folder / "teacher_run_time_s.json"
    if sorting_folder.is_dir() and time_file.is_file():
        return sorting_folder, float(json.loads(time_file.read_text()))
    params = default_params()
    window = training_window(data.recording, dict(params, **data.esort_window_params()))
    t0 = time.perf_counter()
    sorting = run_annotation_sorter(data.recording, window, params["annotation_sorter"],
                                    dict(job_kwargs=dict(n_jobs=n_jobs, progress_bar=False)), folder / "sorter", False)
    seconds = time.perf_counter() - t0
    spikes = sorting.to_spike_vector()
    inside, frames = window.from_pieces_frames(spikes["sample_index"])
    units = np.asarray(sorting.unit_ids)[spikes["unit_index"][inside]]
    NumpySorting.from_samples_and_labels([frames], [units], data.recording.get_sampling_frequency(),
                                         unit_ids=sorting.unit_ids).save(folder=sorting_folder, overwrite=True)
    time_file.write_text(json.dumps(seconds))  # written last: marks a finished teacher run
    return sorting_folder, seconds


def settings_study(folder: Path, presets: list[str], candidates: list[str], long_duration_s: float | None = None,
                   n_jobs: int | None = None, teacher: bool = False) -> list[dict]:
    """Each candidate on each preset, trained on the ground truth of the annotation window (``teacher``: on the
    annotations of esort's default teacher there, run once per preset and shared by the candidates)."""
    n_jobs = n_jobs or os.cpu_count() or 1
    rows = []
    for preset in presets:
        data, description = preset_recording(preset, folder, long_duration_s)
        # `long`'s first long_duration_s is another recording, with another window: its own teacher run and runs
        suffix = f"_{long_duration_s:g}s" if preset == "long" and long_duration_s else ""
        source = str(data.truth_folder)
        if teacher:
            print(f"{preset}: {default_params()['annotation_sorter']} on the annotation window ...", flush=True)
            annotation_folder, teacher_s = teacher_annotations(data, folder / preset / f"teacher_annotations{suffix}",
                                                               n_jobs)
            source = str(annotation_folder)
            print(f"  {teacher_s:.1f} s", flush=True)
        reference = None
        for candidate in candidates:
            params = candidate_params(candidate)
            if teacher:  # the teacher's annotations come as a saved sorting: curated as esort curates its teacher's
                params["annotation_curation"] = resolve_annotation_curation(dict(default_params(), **params))
            name = re.sub(r"[^\w.-]+", "_", candidate.replace("=", "_").replace(",", "__")).strip("_")
            name += "_teacher" if teacher else ""
            sorter_folder = folder / preset / f"runs{suffix}" / name
            print(f"{preset}: esort {candidate}{' (teacher annotations)' if teacher else ''} ...", flush=True)
            sorting, scores, performance = sort_or_reuse(
                sorter_folder, data, annotation_sorting_path=source, **data.esort_window_params(),
                job_kwargs=dict(n_jobs=n_jobs), **params,
            )
            if candidate == "published":
                reference = performance["accuracy"]
            row = dict(preset=preset, candidate=candidate + (" (teacher annotations)" if teacher else ""),
                       accuracy=scores["accuracy"], well_detected=scores["well_detected"],
                       units_found=len(sorting.unit_ids),
                       precision=scores["precision"], recall=scores["recall"], time_s=scores["time_s"],
                       **_steps(sorter_folder))
            if reference is not None:
                delta = performance["accuracy"] - reference
                row.update(delta=float(delta.mean()), worst_unit_delta=float(delta.min()))
            rows.append(row)
            print(f"  accuracy {row['accuracy']:.3f}, {row['time_s']:.1f} s (training {row['training_s']:.1f} s, "
                  f"inference {row['inference_s']:.1f} s)", flush=True)
    return rows


def teacher_window_study(folder: Path, windows_s: list[float], long_duration_s: float | None = None,
                         n_jobs: int | None = None) -> list[dict]:
    """esort with its defaults and the default teacher, annotated on windows of ``windows_s`` seconds of the
    ``long`` preset, scored after the longest window."""
    from .benchmark import BenchmarkData

    n_jobs = n_jobs or os.cpu_count() or 1
    data, _ = preset_recording("long", folder, long_duration_s)
    rows = []
    for window_s in windows_s:
        sorter_folder = folder / "long" / "runs" / f"teacher_window_{window_s:g}s"
        print(f"long: esort, default teacher on {window_s:g} s ...", flush=True)
        scored = BenchmarkData(data.recording, data.truth, data.truth_folder, max(windows_s))
        _, scores, _ = sort_or_reuse(sorter_folder, scored, train_duration_s=float(window_s), train_pieces=1,
                                     job_kwargs=dict(n_jobs=n_jobs))
        row = dict(preset="long", candidate=f"train_duration_s={window_s:g} (default teacher)",
                   accuracy=scores["accuracy"], precision=scores["precision"], recall=scores["recall"],
                   time_s=scores["time_s"], **_steps(sorter_folder))
        rows.append(row)
        print(f"  accuracy {row['accuracy']:.3f}, {row['time_s']:.1f} s (teacher {row['annotation_s']:.1f} s)", flush=True)
    return rows


def train_pieces_study(folder: Path, counts: list[int], long_duration_s: float | None = None,
                       n_jobs: int | None = None, teacher: bool = False, bin_s: float = 60.0) -> list[dict]:
    """esort on the ``long`` preset with its default window length cut into each of ``counts`` pieces
    (``train_pieces``), trained on the ground truth (``teacher``: on its default teacher), all scored on the same
    held-out part: after the window's length, without any count's pieces; also per ``bin_s`` bin, with the last
    bin minus the first (``decay``: what drift costs)."""
    from ..annotation import training_pieces_s
    from .benchmark import accuracy_per_bin
    from .datasets import held_out_comparison

    n_jobs = n_jobs or os.cpu_count() or 1
    data, _ = preset_recording("long", folder, long_duration_s)
    fs = data.recording.get_sampling_frequency()
    duration_s = data.recording.get_num_samples(0) / fs
    windows = {n: dict(train_start_s=0.0, train_duration_s=float(data.annotation_s), train_pieces=int(n)) for n in counts}
    start = int(round(data.annotation_s * fs))
    excluded = tuple(sorted({(int(round(a * fs)), int(round(b * fs)))
                             for w in windows.values() for a, b in training_pieces_s(duration_s, w)}))
    end = data.recording.get_num_samples(0)
    rows = []
    for n, window in windows.items():
        name = f"train_pieces_{n}" + ("_teacher" if teacher else "")
        print(f"long: esort, {data.annotation_s:g} s window in {n} piece(s) ...", flush=True)
        source = dict(job_kwargs=dict(n_jobs=n_jobs)) if teacher else dict(annotation_sorting_path=str(data.truth_folder),
                                                                            job_kwargs=dict(n_jobs=n_jobs))
        sorting, scores, _ = sort_or_reuse(folder / "long" / "runs" / name, data, **window, **source)
        performance = held_out_comparison(sorting, data.truth, start, end, excluded).get_performance()
        bins = [row["accuracy"] for row in accuracy_per_bin(sorting, data.truth, start, end, fs, bin_s, excluded)]
        row = dict(preset="long", candidate=f"train_pieces={n}" + (" (default teacher)" if teacher else ""),
                   accuracy=float(performance["accuracy"].astype(float).mean()), first_bin=bins[0], last_bin=bins[-1],
                   decay=bins[-1] - bins[0], time_s=scores["time_s"], **_steps(folder / "long" / "runs" / name))
        rows.append(row)
        print(f"  accuracy {row['accuracy']:.3f}; first {bin_s:g} s {bins[0]:.3f}, last {bins[-1]:.3f}; "
              f"{row['time_s']:.1f} s", flush=True)
    return rows


def teacher_pieces_study(folder: Path, counts: list[int], long_duration_s: float | None = None,
                         n_jobs: int | None = None) -> list[dict]:
    """esort's default teacher on its default window of the ``long`` preset cut into each of ``counts`` pieces,
    the pieces end to end as esort gives them to it (``TrainingWindow.teacher_recording``), scored against the
    ground truth of the same pieces: what the teacher's annotations are worth before any training. A finished run
    already in ``folder/long/teacher_pieces/pN`` is scored again, not run again."""
    import time

    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting
    from spikeinterface.sorters import read_sorter_folder, run_sorter

    from ..annotation import TrainingWindow, training_window

    n_jobs = n_jobs or os.cpu_count() or 1
    data, _ = preset_recording("long", folder, long_duration_s)
    params = default_params()
    teacher_params = dict(job_kwargs=dict(n_jobs=n_jobs, progress_bar=False))
    rows = []
    for n in counts:
        window = training_window(data.recording, dict(params, train_pieces=int(n), train_duration_s=data.annotation_s))
        sorter_folder = folder / "long" / "teacher_pieces" / f"p{n}"
        log_file = sorter_folder / "spikeinterface_log.json"
        print(f"long: {params['annotation_sorter']} on {window.describe(data.recording.get_sampling_frequency())} ...",
              flush=True)
        if log_file.is_file() and not json.loads(log_file.read_text()).get("error"):
            sorting = read_sorter_folder(sorter_folder, register_recording=False)
            seconds = float(json.loads(log_file.read_text())["run_time"])
            print("  (already run: reused)", flush=True)
        else:
            t0 = time.perf_counter()
            sorting = run_sorter(params["annotation_sorter"], window.teacher_recording(data.recording),
                                 folder=sorter_folder, remove_existing_folder=True, verbose=False, **teacher_params)
            seconds = time.perf_counter() - t0
        spikes = data.truth.to_spike_vector()
        inside, frames = TrainingWindow(window.pieces).to_training_frames(spikes["sample_index"])  # pieces in order
        truth = NumpySorting.from_samples_and_labels([frames], [data.truth.unit_ids[spikes["unit_index"][inside]]],
                                                     data.recording.get_sampling_frequency(),
                                                     unit_ids=data.truth.unit_ids)
        comparison = compare_sorter_to_ground_truth(truth, sorting, exhaustive_gt=True)
        row = dict(preset="long", candidate=f"teacher on train_pieces={n}", pieces=int(n),
                   accuracy=float(comparison.get_performance()["accuracy"].astype(float).mean()),
                   teacher_units=len(sorting.unit_ids), well_detected=comparison.count_well_detected_units(0.8),
                   false_positive_units=comparison.count_false_positive_units(),
                   redundant_units=comparison.count_redundant_units(), time_s=seconds)
        rows.append(row)
        print(f"  {row['teacher_units']} units, accuracy {row['accuracy']:.3f}, {row['well_detected']} well detected, "
              f"{row['false_positive_units']} false positive, {row['redundant_units']} redundant", flush=True)
    return rows


def teacher_markdown(rows: list[dict]) -> str:
    lines = ["| pieces | teacher units | accuracy on the pieces | well detected (acc >= 0.8) | false positive units | "
             "redundant units | teacher run (s) |", "|" + " --- |" * 7]
    for r in rows:
        lines.append(f"| {r['pieces']} | {r['teacher_units']} | {r['accuracy']:.3f} | {r['well_detected']} | "
                     f"{r['false_positive_units']} | {r['redundant_units']} | {r['time_s']:.1f} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    named = dict(preset="preset", candidate="candidate", accuracy="held-out accuracy",
                 well_detected="units >= 0.8", units_found="units found", delta="- published (mean)",
                 worst_unit_delta="- published (worst unit)", first_bin="first minute", last_bin="last minute",
                 decay="last - first", time_s="run_sorter (s)", annotation_s="annotation (s)",
                 training_s="training + thresholds (s)", inference_s="inference (s)")
    optional = ("well_detected", "units_found", "first_bin", "last_bin", "decay")
    columns = [c for c in named if c not in optional or any(c in row for row in rows)]
    header = [named[c] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None or (isinstance(value, float) and value != value):
                cells.append("")
            elif column in ("delta", "worst_unit_delta", "decay"):
                cells.append(f"{value:+.3f}")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}" if column in ("accuracy", "first_bin", "last_bin") else f"{value:.1f}")
            else:
                cells.append(f"`{value}`" if column == "candidate" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from .benchmark import PRESETS

    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.settings_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="esort_settings")
    parser.add_argument("--presets", nargs="+", default=["small", "np1", "drifting", "long"], choices=sorted(PRESETS))
    parser.add_argument("--candidates", nargs="*", default=["published", "defaults"],
                        help=f"names ({', '.join(CANDIDATES)}) or name=value,name=value over the defaults")
    parser.add_argument("--teacher-annotations", action="store_true",
                        help="train the candidates on the annotations of esort's default teacher (run once per preset "
                             "on the annotation window) instead of the ground truth")
    parser.add_argument("--long-duration", type=float, help="use only the first S seconds of the long preset")
    parser.add_argument("--teacher-windows", nargs="*", type=float, default=[],
                        help="also: esort with its defaults and default teacher on these training windows (s) of 'long'")
    parser.add_argument("--train-pieces", nargs="*", type=int, default=[],
                        help="also: esort on 'long' with its default window in each of these numbers of pieces, "
                             "ground-truth annotations, scored on a common held-out part and minute by minute")
    parser.add_argument("--train-pieces-teacher", action="store_true",
                        help="--train-pieces with esort's default teacher instead of the ground truth")
    parser.add_argument("--teacher-pieces", nargs="*", type=int, default=[],
                        help="also: the default teacher alone on the default window of 'long' in each of these numbers "
                             "of pieces, scored against the ground truth of the pieces")
    parser.add_argument("--n-jobs", type=int, help="CPU threads (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in args.candidates:  # refuse a bad candidate before hours of work
        if {"train_start_s", "train_duration_s", "train_pieces"} & set(candidate_params(candidate)):
            raise SystemExit(f"candidate {candidate!r}: the training window is the preset's; use --teacher-windows "
                             "or --train-pieces to vary it")
    rows = settings_study(folder, args.presets, args.candidates, args.long_duration, args.n_jobs,
                          args.teacher_annotations) if args.candidates else []
    if args.teacher_windows:
        rows += teacher_window_study(folder, args.teacher_windows, args.long_duration, args.n_jobs)
    if args.train_pieces:
        rows += train_pieces_study(folder, args.train_pieces, args.long_duration, args.n_jobs, args.train_pieces_teacher)
    teacher_rows = teacher_pieces_study(folder, args.teacher_pieces, args.long_duration, args.n_jobs) \
        if args.teacher_pieces else []
    pd.DataFrame(rows).to_csv(folder / "settings.csv", index=False)
    command = " ".join(["python -m spikeinterface_esort.tools.settings_study"] + (sys.argv[1:] if argv is None else list(argv)))
    text = (markdown(rows) if rows else "") + (("\n" if rows else "") + teacher_markdown(teacher_rows) if teacher_rows else "")
    if teacher_rows:
        pd.DataFrame(teacher_rows).to_csv(folder / "teacher_pieces.csv", index=False)
    (folder / "settings.md").write_text(f"Command: `{command}`\n\n" + text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
