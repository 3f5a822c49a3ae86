"""Benchmark: esort against Kilosort4, SpikeInterface's sorters and ground truth, in one command.

    python -m spikeinterface_esort.tools.benchmark --preset small --folder esort_benchmark
    python -m spikeinterface_esort.tools.benchmark --preset np1 --folder esort_benchmark
    python -m spikeinterface_esort.tools.benchmark --recording sim.h5 --folder F                # MEArec file: its ground truth
    python -m spikeinterface_esort.tools.benchmark --recording REC --ground-truth GT --folder F  # saved SpikeInterface folders
    python -m spikeinterface_esort.tools.benchmark --recording REC --reference kilosort4 --folder F  # no ground truth

Each recording is split in two: an annotation window (the first ``annotation_s`` seconds of segment 0, or
that many seconds in ``annotation_pieces`` pieces spread over it as esort spreads its training window on a
long recording), the only part esort learns from, and the held-out rest, the only part any sorter is scored on, with
SpikeInterface's ``compare_sorter_to_ground_truth`` and its defaults. Every sorter runs through
``run_sorter`` on the whole recording, so a number here is what a user gets, inside SpikeInterface's
``SorterStudy`` (``FOLDER/study``, which can be reopened with ``HeldOutSorterStudy(FOLDER / "study")``
for its plots). The sorters (``SORTERS``):

- ``esort``: ``run_sorter("esort", recording)`` with no parameters: its default teacher on its default training
  window (which must lie inside the annotation window);
- ``esort_ground_truth``: esort trained on the ground truth of the annotation window (the paper's setting);
- ``esort_published``: ``esort_ground_truth`` with the exact published path (``parameters.PUBLISHED_PARAMS``: dense
  spatial filter, float32, stride 1, up to 30 epochs of every spike; not in the default list);
- ``esort_teacher``: esort trained on a teacher sorter run on the annotation window (the real-data setting;
  ``teacher``, default spykingcircus2);
- ``esort_ensemble``: esort trained on a teacher ensemble (``ensemble``, default spykingcircus2 and
  tridesclous2, each run on the annotation window; ``ensemble_unmatched_units`` as given);
- ``esort_self_training``: ``esort_teacher`` with ``self_training_rounds`` (default 1);
- ``kilosort4`` (CPU or GPU, when installed), ``spykingcircus2``, ``tridesclous2``; any other installed
  SpikeInterface sorter by name, with its defaults.

Without ground truth (``reference``): the reference sorter (or a saved sorting, e.g. a curated one) sorts
the whole recording and stands in for ground truth; esort learns from the reference's annotation window
(``esort_teacher``) and every sorter's agreement with the reference on the held-out part is reported, as
the journal version of the E-Sort paper does on real data.

Written to ``folder``: ``results.csv`` / ``results.json`` (per sorter: mean accuracy, precision, recall,
well-detected units, units found, wall time of ``run_sorter`` and, for esort, its steps), ``units.csv``
(per sorter and ground-truth unit: accuracy, precision, recall, SNR), ``results.md`` (the table),
``accuracy_vs_snr.png`` and ``run_time.png``. A sorter that fails is reported as failed (its error and log
folder in the table) and the others still run; a sorter already run in ``folder`` is not run again unless
``rerun``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from spikeinterface.benchmark.benchmark_sorter import SorterBenchmark, SorterStudy
from spikeinterface.core import BaseRecording, BaseSorting, create_sorting_analyzer, load

import spikeinterface_esort  # noqa: F401  (registers "esort")

from ..annotation import default_train_duration_s, default_train_pieces, training_pieces_s
from ..parameters import PUBLISHED_PARAMS, default_params
from .datasets import generate_dataset, generate_drifting_dataset, generate_long_dataset, held_out_comparison

WELL_DETECTED_ACCURACY = 0.8  # SpikeInterface's default well_detected_score


@dataclass(frozen=True)
class Preset:
    """A generated ground-truth recording: ``make(folder, duration_s, seed)`` saves and returns it."""

    description: str
    duration_s: float
    make: object = field(repr=False)
    annotation_s: object = field(default=None, repr=False)  # duration_s -> window (s); None: half the recording
    annotation_pieces: object = field(default=None, repr=False)  # (duration_s, window_s) -> pieces; None: 1


PRESETS = {
    "small": Preset(
        "32 channels (4 x 8, 20 um pitch), 10 units, 5 uV noise, 30 kHz", 60.0,
        lambda folder, duration_s, seed: generate_dataset(folder, 32, 10, duration_s, seed=seed),
    ),
    "np1": Preset(
        "384 channels, Neuropixels-1.0-like layout (4 staggered columns, 3.84 mm), 64 units, 5 uV noise, 30 kHz", 40.0,
        lambda folder, duration_s, seed: generate_dataset(folder, 384, 64, duration_s, seed=seed, layout="np1"),
    ),
    "grid64": Preset(
        "64 channels (4 x 16, 20 um pitch), 30 units, 5 uV noise, 30 kHz", 120.0,
        lambda folder, duration_s, seed: generate_dataset(folder, 64, 30, duration_s, seed=seed),
    ),
    "drifting": Preset(
        "generate_drifting_recording, 32 channels (4 x 8, 20 um pitch), 12 units, zigzag drift +-15 um "
        "(30 s period), 30 kHz", 90.0,
        lambda folder, duration_s, seed: generate_drifting_dataset(folder, "zigzag", duration_s=duration_s, seed=seed),
    ),
    "long": Preset(
        "probeinterface's Neuropixels 1.0 probe (NP1000, bank 0: 384 channels in their recording order), "
        "generate_drifting_recording, 80 units firing at 1-20 Hz, 7 uV correlated noise, slow rigid drift of 25 um "
        "over the recording, saved as int16, 30 kHz", 600.0,
        lambda folder, duration_s, seed: generate_long_dataset(folder, duration_s, seed=seed, n_jobs=os.cpu_count() or 1,
                                                               progress_bar=True),
        annotation_s=default_train_duration_s,  # esort's own default window: the no-parameter case learns from it
        annotation_pieces=default_train_pieces,
    ),
}

SORTERS = ("esort", "esort_ground_truth", "esort_teacher", "kilosort4", "spykingcircus2", "tridesclous2")
ENSEMBLE = ("spykingcircus2", "tridesclous2")


@dataclass
class BenchmarkData:
    """A recording, the sorting it is scored against (ground truth, or the reference in agreement mode),
    that sorting's folder (esort reads annotations from it) and the annotation window: ``annotation_s``
    seconds in ``annotation_pieces`` pieces, placed as esort places its training window (from 0 s, the last
    piece ending at the recording's end). Everything else is held out."""

    recording: BaseRecording
    truth: BaseSorting
    truth_folder: Path
    annotation_s: float
    agreement: bool = False
    reference: str | None = None
    annotation_pieces: int = 1

    def pieces_s(self) -> list[tuple[float, float]]:
        """The annotation window's pieces, (start, end) in s."""
        return training_pieces_s(self.recording.get_num_samples(0) / self.recording.get_sampling_frequency(),
                                 self.esort_window_params())

    def esort_window_params(self) -> dict:
        """esort's parameters that place its training window on the annotation window."""
        return dict(train_start_s=0.0, train_duration_s=float(self.annotation_s), train_pieces=int(self.annotation_pieces))

    @property
    def held_out_start_frame(self) -> int:
        """The end of the first piece: nothing before it is scored."""
        return int(round(self.pieces_s()[0][1] * self.recording.get_sampling_frequency()))

    @property
    def excluded_frames(self) -> tuple[tuple[int, int], ...]:
        """The other pieces, (start, end) frames: not scored either."""
        fs = self.recording.get_sampling_frequency()
        return tuple((int(round(a * fs)), int(round(b * fs))) for a, b in self.pieces_s()[1:])


class HeldOutSorterBenchmark(SorterBenchmark):
    """SpikeInterface's ``SorterBenchmark``, scored on frames from ``held_out_start_frame`` only, without the
    ``excluded`` (start, end) frame ranges."""

    def __init__(self, recording, gt_sorting, params, sorter_folder, held_out_start_frame: int, excluded=()):
        super().__init__(recording, gt_sorting, params, sorter_folder)
        self.held_out_start_frame = held_out_start_frame
        self.excluded = tuple(tuple(r) for r in excluded)

    def compute_result(self, **job_kwargs):
        self.result["gt_comparison"] = held_out_comparison(
            self.result["sorting"], self.gt_sorting, self.held_out_start_frame, self.recording.get_num_samples(0),
            self.excluded,
        )


class HeldOutSorterStudy(SorterStudy):
    """SpikeInterface's ``SorterStudy`` whose cases carry ``held_out_start_frame`` and ``excluded_frames``
    (frames of segment 0)."""

    benchmark_class = HeldOutSorterBenchmark

    def create_benchmark(self, key):
        case = self.cases[key]
        recording, gt_sorting = self.datasets[case["dataset"]]
        return HeldOutSorterBenchmark(
            recording, gt_sorting, case["params"], self.folder / "sorters" / self.key_to_str(key),
            case["held_out_start_frame"], case.get("excluded_frames", ()),
        )


def sorter_cases(sorters: list[str], data: BenchmarkData, teacher: str, n_jobs: int,
                 ensemble: tuple[str, ...] = ENSEMBLE, ensemble_unmatched_units: str = "keep",
                 self_training_rounds: int = 1) -> dict[str, dict]:
    """``SorterStudy`` cases: key -> label, run_sorter params and held-out start, for each of ``sorters``."""
    import spikeinterface.sorters as ss

    installed = set(ss.installed_sorters())
    cases = {}
    for key in sorters:
        if key == "esort":  # what a user gets from run_sorter("esort", recording): its default teacher and window
            duration_s = data.recording.get_num_samples(0) / data.recording.get_sampling_frequency()
            own = training_pieces_s(duration_s, default_params())
            if not np.allclose(own, data.pieces_s()):
                raise ValueError(f"esort with no parameters trains on {_pieces_text(own)}, not on the annotation "
                                 f"window ({_pieces_text(data.pieces_s())}): it would learn from scored data "
                                 "(use --annotation-s and --annotation-pieces, or esort_teacher)")
            name, label, params = "esort", "esort (no parameters)", {}
        elif key in ("esort_ground_truth", "esort_published"):
            if data.agreement:
                raise ValueError(f"{key} needs a ground truth; in agreement mode use esort_teacher")
            name, label = "esort", "esort (ground-truth annotations)"
            params = dict(annotation_sorting_path=str(data.truth_folder), **data.esort_window_params())
            if key == "esort_published":
                label = "esort (ground-truth annotations; published path)"
                params.update(PUBLISHED_PARAMS)
        elif key == "esort_teacher":
            name = "esort"
            if data.agreement:  # the reference's own annotation window: the reference is not run twice
                label = f"esort ({data.reference} annotations)"
                params = dict(annotation_sorting_path=str(data.truth_folder), **data.esort_window_params())
            else:
                label = f"esort ({teacher} annotations)"  # the teacher gets the same cores as the sorters
                params = dict(annotation_sorter=teacher, annotation_sorter_params=_job_params(teacher, n_jobs),
                              **data.esort_window_params())
        elif key == "esort_self_training":
            if data.agreement:
                raise ValueError("esort_self_training learns from its own teacher; in agreement mode use esort_teacher")
            name = "esort"
            label = f"esort ({teacher} annotations, {self_training_rounds} round(s) of self-training)"
            params = dict(annotation_sorter=teacher, annotation_sorter_params=_job_params(teacher, n_jobs),
                          self_training_rounds=self_training_rounds, **data.esort_window_params())
        elif key == "esort_ensemble":
            if data.agreement:
                raise ValueError("esort_ensemble learns from its own teachers; in agreement mode use esort_teacher")
            name = "esort"
            label = f"esort ({' + '.join(ensemble)} annotations, unmatched units: {ensemble_unmatched_units})"
            params = dict(annotation_sorter=list(ensemble),
                          annotation_sorter_params={t: _job_params(t, n_jobs) for t in ensemble},
                          ensemble_unmatched_units=ensemble_unmatched_units, **data.esort_window_params())
        else:
            name, label, params = key, key, {}
        if name not in installed:
            raise ValueError(f"sorter {name!r} (case {key!r}) is not installed; installed: {sorted(installed)}")
        params = dict(_job_params(name, n_jobs), **params)
        cases[key] = dict(
            label=label, dataset="data", held_out_start_frame=data.held_out_start_frame,
            excluded_frames=[list(r) for r in data.excluded_frames],
            params=dict(sorter_name=name, remove_existing_folder=True, verbose=False, **params),
        )
        if name == "esort":  # esort's defaults as they were run, and its default window: a change of either is a new run
            cases[key]["esort_defaults"] = json.loads(json.dumps(default_params()))
            cases[key]["esort_default_window_s"] = [list(p) for p in training_pieces_s(
                data.recording.get_num_samples(0) / data.recording.get_sampling_frequency(), default_params())]
    return cases


def _job_params(sorter_name: str, n_jobs: int) -> dict:
    """Every sorter gets the same cores: SpikeInterface sorters through ``job_kwargs``; Kilosort4 uses torch's
    threads (all cores by default)."""
    import spikeinterface.sorters as ss

    if sorter_name not in ss.sorter_dict:  # an unknown teacher: esort's own check reports it
        return {}
    defaults = ss.get_default_sorter_params(sorter_name)
    if "job_kwargs" in defaults:
        return dict(job_kwargs=dict(n_jobs=n_jobs, progress_bar=False))
    return {}


def run_benchmark(
    data: BenchmarkData,
    folder: str | Path,
    sorters: list[str] | tuple[str, ...] = SORTERS,
    teacher: str = "spykingcircus2",
    n_jobs: int | None = None,
    rerun: bool | list[str] = False,
    description: str = "",
    command: str | None = None,
    bin_s: float = 60.0,
    ensemble: tuple[str, ...] = ENSEMBLE,
    ensemble_unmatched_units: str = "keep",
    self_training_rounds: int = 1,
) -> pd.DataFrame:
    """Run ``sorters`` on ``data.recording`` and score them on its held-out part; write the results,
    table and plots to ``folder`` (see the module's doc). Returns the per-sorter table. Sorters that
    are not installed are skipped with a message (``kilosort4``: ``pip install kilosort``). A sorter already
    run in ``folder`` with the same parameters is not run again unless ``rerun`` (True: all; or a list of
    case names). The held-out part is also scored in consecutive bins of ``bin_s`` seconds (``timecourse.csv``,
    ``accuracy_vs_time.png``)."""
    import spikeinterface.sorters as ss

    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    if data.recording.get_num_segments() != 1:
        raise ValueError("the benchmark scores segment 0 after the annotation window: give a one-segment recording "
                         "(spikeinterface.concatenate_recordings joins segments)")
    duration_s = data.recording.get_total_duration()
    if not 0 < data.annotation_s < duration_s:
        raise ValueError(f"annotation window {data.annotation_s:g} s must be inside the recording ({duration_s:g} s)")
    n_jobs = n_jobs or os.cpu_count() or 1
    installed = set(ss.installed_sorters())
    wanted = []
    for key in sorters:
        name = "esort" if key.startswith("esort_") else key
        if name in installed:
            wanted.append(key)
        else:
            print(f"skipped {key}: not installed" + (" (pip install kilosort)" if key == "kilosort4" else ""), flush=True)
    study = _open_study(folder / "study", data, sorter_cases(wanted, data, teacher, n_jobs, tuple(ensemble),
                                                            ensemble_unmatched_units, self_training_rounds))
    rows, units, timecourse = [], [], []
    for i, key in enumerate(wanted, start=1):
        label = study.cases[key]["label"]
        result_folder = study.folder / "results" / key
        again = rerun is True or (isinstance(rerun, (list, tuple)) and key in rerun)
        if again or not (result_folder / "run_time.pickle").exists():
            print(f"[{i}/{len(wanted)}] {label}: run_sorter({study.cases[key]['params']['sorter_name']!r}) ...", flush=True)
            try:
                with PeakMemory() as memory:
                    study.run(case_keys=[key], keep=False)
                (result_folder / "memory.json").write_text(json.dumps(memory.summary()))
            except Exception as error:  # one sorter's failure is a result, not the end of the benchmark
                shutil.rmtree(result_folder, ignore_errors=True)
                study.benchmarks[key] = None
                rows.append(dict(case=key, sorter=label, status=f"failed: {type(error).__name__}: {error}".splitlines()[0],
                                 log_folder=str(study.folder / "sorters" / key)))
                print(f"[{i}/{len(wanted)}] {label}: FAILED ({rows[-1]['status']}); log in {rows[-1]['log_folder']}", flush=True)
                continue
        study.compute_results(case_keys=[key])
        row, unit_rows = _score(study, key, data)
        memory_file = result_folder / "memory.json"
        if memory_file.is_file():
            row.update(json.loads(memory_file.read_text()))
        rows.append(row)
        units += unit_rows
        timecourse += _timecourse(study, key, data, bin_s)
        print(f"[{i}/{len(wanted)}] {label}: {row['run_time_s']:.1f} s, held-out {_score_name(data)} "
              f"{row['accuracy']:.3f}, {row['well_detected']}/{row['num_truth_units']} well detected", flush=True)
    table = pd.DataFrame(rows)
    info = _run_info(data, description, n_jobs, teacher, command)
    write_outputs(folder, table, pd.DataFrame(units), info, _snr(study), pd.DataFrame(timecourse))
    return table


class PeakMemory:
    """Peak resident memory (MB) of this process and all its child processes together, sampled every
    ``interval_s`` seconds in a thread while the block runs (a sorter's worker processes included); ``summary``
    gives it with the resident memory before the block (``baseline_rss_mb``: what the benchmark itself held)."""

    def __init__(self, interval_s: float = 0.2):
        import threading

        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak_mb = self.baseline_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_mb(self) -> float:
        import psutil

        total = 0
        for process in [self.process] + self.process.children(recursive=True):
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that ended between the listing and the reading
                pass
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self._tree_mb())

    def __enter__(self) -> "PeakMemory":
        self.baseline_mb = self.peak_mb = self._tree_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._tree_mb())

    def summary(self) -> dict:
        return dict(peak_rss_mb=round(self.peak_mb, 1), baseline_rss_mb=round(self.baseline_mb, 1))


def time_bins(start_frame: int, end_frame: int, sampling_frequency: float, bin_s: float) -> list[tuple[int, int]]:
    """Consecutive bins of ``bin_s`` seconds from ``start_frame`` to ``end_frame``; a last bin shorter than half a
    bin joins the one before it."""
    step = max(1, int(round(bin_s * sampling_frequency)))
    edges = list(range(start_frame, end_frame, step)) + [end_frame]
    if len(edges) > 2 and edges[-1] - edges[-2] < step / 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def accuracy_per_bin(sorting: BaseSorting, truth: BaseSorting, start_frame: int, end_frame: int,
                     sampling_frequency: float, bin_s: float, excluded: tuple = ()) -> list[dict]:
    """Mean accuracy of ``sorting`` over the truth units that fire in each ``time_bins`` bin of frames
    ``[start_frame, end_frame)`` (without the ``excluded`` frame ranges): start_s, end_s, accuracy, num_truth_units."""
    fs = sampling_frequency
    rows = []
    for start, end in time_bins(start_frame, end_frame, fs, bin_s):
        performance = held_out_comparison(sorting, truth, start, end, excluded).get_performance()
        firing = truth.frame_slice(start, end).count_num_spikes_per_unit(outputs="array") > 0
        accuracy = performance["accuracy"].astype(float).to_numpy()[firing]
        rows.append(dict(start_s=start / fs, end_s=end / fs,
                         accuracy=float(accuracy.mean()) if len(accuracy) else float("nan"),
                         num_truth_units=int(firing.sum())))
    return rows


def _timecourse(study: HeldOutSorterStudy, key: str, data: BenchmarkData, bin_s: float) -> list[dict]:
    """``accuracy_per_bin`` of ``key``'s sorting on the held-out part."""
    bins = accuracy_per_bin(study.get_result(key)["sorting"], data.truth, data.held_out_start_frame,
                            data.recording.get_num_samples(0), data.recording.get_sampling_frequency(), bin_s,
                            data.excluded_frames)
    return [dict(case=key, sorter=study.cases[key]["label"], **row) for row in bins]


SCORING_FIELDS = ("held_out_start_frame", "excluded_frames")


def _open_study(study_folder: Path, data: BenchmarkData, cases: dict) -> HeldOutSorterStudy:
    """The study in ``study_folder`` if it holds the same recording and truth, with ``cases`` added; else a new
    one. A case already run with the same sorter and parameters but another annotation window is kept and
    scored again on the new held-out part, not run again. The dataset is a SortingAnalyzer of the truth on the
    recording (SorterStudy's datasets must be analyzers)."""
    stamp = dict(truth_folder=str(data.truth_folder), annotation_s=data.annotation_s,
                 pieces_s=[list(p) for p in data.pieces_s()],
                 num_samples=int(data.recording.get_num_samples(0)), channels=[str(c) for c in data.recording.channel_ids])
    stamp_file = study_folder / "esort_benchmark_dataset.json"
    same_data = ("truth_folder", "num_samples", "channels")
    if stamp_file.is_file() and all(json.loads(stamp_file.read_text()).get(k) == stamp[k] for k in same_data):
        study = HeldOutSorterStudy(study_folder)
        for key, case in cases.items():
            old = study.cases.get(key)
            if old is not None and old != case and _without_scoring(old) == _without_scoring(case):
                study.cases[key] = case  # the same run, scored on the new held-out part
                if study.benchmarks.get(key) is not None:
                    study.benchmarks[key].held_out_start_frame = case["held_out_start_frame"]
                    study.benchmarks[key].excluded = tuple(tuple(r) for r in case["excluded_frames"])
        (study.folder / "cases.pickle").write_bytes(pickle.dumps(study.cases))
        stamp_file.write_text(json.dumps(stamp))
        changed = [key for key in cases if key in study.cases and study.cases[key] != cases[key]]
        if set(changed) != set(study.cases):  # else every case goes: a new study (SpikeInterface cannot add
            if changed:  # cases to an empty one); a case run with other parameters loses its results and folder
                study.remove_cases(changed)
            new = {key: case for key, case in cases.items() if key not in study.cases}
            if new:
                study.add_cases(new)
            return study
    if study_folder.exists():
        shutil.rmtree(study_folder)
    analyzer = create_sorting_analyzer(data.truth, data.recording, sparse=True, format="memory")
    analyzer.compute(["random_spikes", "noise_levels", "templates"], n_jobs=1, progress_bar=False)
    study = HeldOutSorterStudy.create(study_folder, datasets={"data": analyzer}, cases=cases, levels="sorter")
    study_folder.joinpath("esort_benchmark_dataset.json").write_text(json.dumps(stamp))
    return study


def _without_scoring(case: dict) -> dict:
    return {k: v for k, v in case.items() if k not in SCORING_FIELDS}


def _score(study: HeldOutSorterStudy, key: str, data: BenchmarkData) -> tuple[dict, list[dict]]:
    result = study.get_result(key)
    comparison = result["gt_comparison"]
    performance = comparison.get_performance()[["accuracy", "precision", "recall"]].astype(float)
    label = study.cases[key]["label"]
    row = dict(
        case=key, sorter=label, status="ok",
        accuracy=float(performance["accuracy"].mean()),
        precision=float(performance["precision"].mean()),
        recall=float(performance["recall"].mean()),
        well_detected=int(comparison.count_well_detected_units(WELL_DETECTED_ACCURACY)),
        num_truth_units=int(len(performance)),
        num_sorted_units=int(len(result["sorting"].unit_ids)),
        run_time_s=float(result["run_time"]),
    )
    row.update(_esort_steps(study.folder / "sorters" / key, row["run_time_s"]))
    units = [dict(case=key, sorter=label, unit_id=str(unit), **{k: float(v) for k, v in scores.items()})
             for unit, scores in performance.iterrows()]
    return row, units


ESORT_STEPS = ("annotation", "training", "inference", "postprocessing")


def _esort_steps(sorter_folder: Path, run_time_s: float) -> dict:
    """esort's wall time per step (s), from its ``timings.json``: annotation (the teacher sorter, or reading
    the annotations, and the curation of its units), training (reading the window, training and threshold
    validation), inference (reading, filtering, network), post-processing (probabilities to spikes; with chunks
    sorted in parallel, the workers' time summed), and other (preprocessing setup, noise estimate, saving,
    run_sorter)."""
    timings_file = sorter_folder / "sorter_output" / "timings.json"
    if not timings_file.is_file():
        return {}
    t = json.loads(timings_file.read_text())
    post = t.get("inference_postprocessing_s", 0.0)
    steps = dict(annotation=t.get("annotation", 0.0) + t.get("curation", 0.0),
                 training=t.get("window", 0.0) + t.get("training", 0.0) + t.get("validation", 0.0),
                 inference=t.get("inference", 0.0) - post, postprocessing=post)
    steps["other"] = run_time_s - sum(steps.values())
    return {f"{k}_s": float(v) for k, v in steps.items()}


def _snr(study: HeldOutSorterStudy) -> pd.Series:
    """SNR of each truth unit (SpikeInterface's quality metric, on the truth's templates and noise levels)."""
    analyzer = study.get_sorting_analyzer(dataset_key="data")
    if not analyzer.has_extension("quality_metrics"):
        analyzer.compute("quality_metrics", metric_names=["snr"], progress_bar=False)
    snr = analyzer.get_extension("quality_metrics").get_data()["snr"]
    snr.index = [str(u) for u in snr.index]
    return snr


def _score_name(data: BenchmarkData) -> str:
    return "agreement" if data.agreement else "accuracy"


def _run_info(data: BenchmarkData, description: str, n_jobs: int, teacher: str, command: str | None) -> dict:
    import spikeinterface
    import torch

    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        command=command,
        dataset=description,
        channels=int(data.recording.get_num_channels()),
        sampling_frequency_hz=float(data.recording.get_sampling_frequency()),
        duration_s=float(data.recording.get_total_duration()),
        annotation_s=float(data.annotation_s),
        annotation_pieces_s=[[float(a), float(b)] for a, b in data.pieces_s()],
        scored_against=f"agreement with {data.reference}" if data.agreement else "ground truth",
        teacher=data.reference if data.agreement else teacher,
        n_jobs=n_jobs,
        machine=_machine(),
        versions=dict(python=platform.python_version(), spikeinterface=spikeinterface.__version__,
                      torch=torch.__version__, esort=spikeinterface_esort.__version__, **_optional_versions()),
    )


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}, {platform.system()}"


def _optional_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("kilosort",):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def write_outputs(folder: Path, table: pd.DataFrame, units: pd.DataFrame, info: dict, snr: pd.Series,
                  timecourse: pd.DataFrame | None = None) -> None:
    """results.csv/json, units.csv, timecourse.csv, results.md and the three plots."""
    timecourse = pd.DataFrame() if timecourse is None else timecourse
    if len(units):
        units["snr"] = units["unit_id"].map(snr)
    table.to_csv(folder / "results.csv", index=False)
    units.to_csv(folder / "units.csv", index=False)
    timecourse.to_csv(folder / "timecourse.csv", index=False)
    (folder / "results.json").write_text(json.dumps(dict(info=info, sorters=table.to_dict(orient="records"),
                                                         units=units.to_dict(orient="records"),
                                                         timecourse=timecourse.to_dict(orient="records")),
                                                    indent=2, default=float))
    _draw(folder, table, units, info, timecourse)


def _draw(folder: Path, table: pd.DataFrame, units: pd.DataFrame, info: dict, timecourse: pd.DataFrame) -> None:
    (folder / "results.md").write_text(markdown_report(table, info, timecourse))
    if len(units):
        plot_accuracy_vs_snr(units, folder / "accuracy_vs_snr.png", _score_label(info))
    if "run_time_s" in table:
        plot_run_times(table, folder / "run_time.png", info)
    if len(timecourse):
        plot_accuracy_vs_time(timecourse, folder / "accuracy_vs_time.png", info)


def _score_label(info: dict) -> str:
    return "agreement with " + str(info["teacher"]) if info["scored_against"].startswith("agreement") else "accuracy"


def redraw(folder: str | Path) -> None:
    """Write ``results.md`` and the plots again from a results folder's ``results.json``."""
    folder = Path(folder)
    saved = json.loads((folder / "results.json").read_text())
    _draw(folder, pd.DataFrame(saved["sorters"]), pd.DataFrame(saved["units"]), saved["info"],
          pd.DataFrame(saved.get("timecourse", [])))


def markdown_table(table: pd.DataFrame) -> str:
    """One row per sorter: held-out accuracy, precision, recall, well-detected units, units found, wall time
    and esort's split of it."""
    header = ["sorter", "accuracy", "precision", "recall", f"well detected (acc >= {WELL_DETECTED_ACCURACY:g})",
              "units found", "wall time (s)", "esort: annotation / training / inference / post-processing (s)",
              "peak RSS (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict(orient="records"):
        if row.get("status", "ok") != "ok":
            lines.append(f"| {row['sorter']} | {row['status']} |" + " |" * (len(header) - 2))
            continue
        split = " / ".join(f"{row[f'{s}_s']:.1f}" for s in ESORT_STEPS) if _has(row, "training_s") else ""
        lines.append(
            f"| {row['sorter']} | {row['accuracy']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{int(row['well_detected'])}/{int(row['num_truth_units'])} | {int(row['num_sorted_units'])} | "
            f"{row['run_time_s']:.1f} | {split} | {row['peak_rss_mb']:.0f} |" if _has(row, "peak_rss_mb") else
            f"{row['run_time_s']:.1f} | {split} | |"
        )
    return "\n".join(lines) + "\n"


def _has(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def markdown_report(table: pd.DataFrame, info: dict, timecourse: pd.DataFrame | None = None) -> str:
    held_out = info["duration_s"] - info["annotation_s"]
    pieces = info.get("annotation_pieces_s") or [[0.0, info["annotation_s"]]]
    window = (f"the first {info['annotation_s']:g} s" if len(pieces) == 1 else
              f"{info['annotation_s']:g} s in {len(pieces)} pieces ({_pieces_text(pieces)})")
    lines = [
        f"Dataset: {info['dataset'] or 'user recording'}; {info['channels']} channels, "
        f"{info['sampling_frequency_hz']:g} Hz, {info['duration_s']:g} s.",
        f"Annotation window: {window} (esort learns from it); scored on the held-out "
        f"{held_out:g} s against {info['scored_against']} with compare_sorter_to_ground_truth (defaults).",
        f"Machine: {info['machine']}; every sorter given {info['n_jobs']} CPU jobs/threads.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + f". Date: {info['date']}.",
    ]
    if info.get("command"):
        lines.append(f"Command: `{info['command']}`")
    lines.append("")
    if info["scored_against"].startswith("agreement"):
        lines.append(f"Accuracy, precision and recall are agreement with {info['teacher']}, not with a ground truth.\n")
    report = "\n".join(lines) + "\n" + markdown_table(table)
    if timecourse is not None and len(timecourse) > 1:
        report += "\n" + timecourse_table(timecourse)
    return report


def _pieces_text(pieces) -> str:
    return ", ".join(f"{a:g}-{b:g} s" for a, b in pieces)


def timecourse_table(timecourse: pd.DataFrame) -> str:
    """Held-out accuracy per time bin (columns) and sorter (rows), and the last bin minus the first."""
    wide = timecourse.pivot_table(index="sorter", columns="start_s", values="accuracy", sort=False)
    bins = [f"{start:g}-{end:g} s" for start, end in timecourse.drop_duplicates("start_s")[["start_s", "end_s"]].values]
    header = ["sorter"] + bins + ["last - first"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for sorter, values in wide.iterrows():
        v = values.to_numpy(dtype=float)
        lines.append(f"| {sorter} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {v[-1] - v[0]:+.3f} |")
    return "Held-out accuracy in each time bin (mean over the truth units firing in it):\n\n" + "\n".join(lines) + "\n"


def plot_accuracy_vs_time(timecourse: pd.DataFrame, path: Path, info: dict) -> None:
    """Held-out accuracy in each time bin, one line per sorter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for sorter, part in timecourse.groupby("sorter", sort=False):
        centres = (part["start_s"] + part["end_s"]) / 2 / 60.0
        ax.plot(centres, part["accuracy"], marker="o", ms=3, label=sorter)
    for i, (start, end) in enumerate(info.get("annotation_pieces_s") or [[0.0, info["annotation_s"]]]):
        ax.axvspan(start / 60.0, end / 60.0, color="grey", alpha=0.15,
                   label="annotation window (not scored)" if i == 0 else None)
    ax.set_xlim(0, info["duration_s"] / 60.0)
    ax.set_xlabel("time in the recording (min)")
    ax.set_ylabel(f"{_score_label(info)} in the bin")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_snr(units: pd.DataFrame, path: Path, score_label: str = "accuracy") -> None:
    """Held-out accuracy of each truth unit against its SNR, one panel per sorter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    sorters = list(dict.fromkeys(units["sorter"]))
    columns = min(3, len(sorters))
    rows = -(-len(sorters) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.1 * rows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[len(sorters):]:
        ax.set_visible(False)
    for ax, sorter in zip(axes.flat, sorters):
        part = units[units["sorter"] == sorter]
        ax.scatter(part["snr"], part["accuracy"], s=12)
        ax.axhline(WELL_DETECTED_ACCURACY, color="grey", lw=0.8, ls="--")
        ax.set_title(textwrap.fill(sorter, 34), fontsize=8)
        ax.set_xlabel("SNR (truth unit)")
        ax.set_ylim(-0.03, 1.03)
        ax.xaxis.set_tick_params(labelbottom=True)
    for row in axes:
        row[0].set_ylabel(f"held-out {score_label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run_times(table: pd.DataFrame, path: Path, info: dict) -> None:
    """Wall time of run_sorter per sorter (s); esort's bar split into its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    ok = table[table["status"] == "ok"].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(ok) + 1.4))
    colours = dict(annotation="tab:orange", training="tab:green", inference="tab:blue", postprocessing="tab:purple",
                   other="tab:grey")
    shown = set()
    for i, row in ok.iterrows():
        if _has(row, "training_s"):
            left = 0.0
            for step, colour in colours.items():
                width = max(row[f"{step}_s"], 0.0)
                ax.barh(i, width, left=left, color=colour, label=None if step in shown else step)
                shown.add(step)
                left += width
        else:
            ax.barh(i, row["run_time_s"], color="tab:brown")
    ax.set_yticks(range(len(ok)), [textwrap.fill(label, 40) for label in ok["sorter"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"wall time of run_sorter (s); {info['duration_s']:g} s of {info['channels']}-channel recording")
    if shown:
        ax.legend(fontsize=7, loc="upper right", title="esort steps", title_fontsize=7, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preset_data(preset: str, folder: Path, duration_s: float | None = None, annotation_s: float | None = None,
                seed: int = 0, annotation_pieces: int | None = None) -> tuple[BenchmarkData, str]:
    """A preset's recording, generated and saved under ``folder/data`` (reused when already there)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    duration_s = duration_s or spec.duration_s
    recording, truth = spec.make(folder / "data", duration_s, seed)
    annotation_s = annotation_s or (spec.annotation_s(duration_s) if spec.annotation_s else duration_s / 2)
    if annotation_pieces is None:
        annotation_pieces = spec.annotation_pieces(duration_s, annotation_s) if spec.annotation_pieces else 1
    return BenchmarkData(recording, truth, folder / "data" / "ground_truth", annotation_s,
                         annotation_pieces=annotation_pieces), \
        f"preset '{preset}': {spec.description}, {duration_s:g} s, seed {seed}"


def user_data(recording_path: str | Path, folder: Path, ground_truth_path: str | Path | None = None,
              reference: str | None = None, annotation_s: float | None = None, teacher_folder: Path | None = None,
              n_jobs: int = 1, annotation_pieces: int = 1) -> tuple[BenchmarkData, str]:
    """A user's recording (a SpikeInterface folder or file that ``load`` reads, or a MEArec ``.h5`` file) with
    its ground truth (a saved sorting; a MEArec file's own when not given), or, with ``reference`` (a sorter
    name or a saved sorting), agreement mode."""
    import spikeinterface.sorters as ss

    recording_path = Path(recording_path)
    truth = None
    if recording_path.suffix in (".h5", ".hdf5"):
        from spikeinterface.extractors import read_mearec

        recording, truth = read_mearec(recording_path)
    else:
        recording = load(recording_path)
    if ground_truth_path is not None:
        truth = load(ground_truth_path)
    annotation_s = annotation_s or recording.get_total_duration() / 2
    truth_folder = folder / "truth"
    if reference is not None:
        if Path(reference).exists():
            truth, label = load(reference), Path(reference).name
        else:
            print(f"reference: run_sorter({reference!r}) on the whole recording ...", flush=True)
            t0 = time.perf_counter()
            truth = ss.run_sorter(reference, recording, folder=folder / "reference", remove_existing_folder=True,
                                  verbose=False, **_job_params(reference, n_jobs))
            print(f"reference: {reference} done in {time.perf_counter() - t0:.1f} s, {len(truth.unit_ids)} units", flush=True)
            label = reference
        truth = truth.save(folder=truth_folder, overwrite=True)
        return BenchmarkData(recording, truth, truth_folder, annotation_s, agreement=True, reference=label,
                             annotation_pieces=annotation_pieces), \
            f"{recording_path} (no ground truth)"
    if truth is None:
        raise ValueError("give the recording's ground truth (--ground-truth, a saved sorting folder) or a reference "
                         "sorter for agreement mode (--reference kilosort4)")
    if recording.get_num_segments() != truth.get_num_segments():
        raise ValueError("the recording and its ground truth have different segment counts")
    truth = truth.save(folder=truth_folder, overwrite=True)
    return BenchmarkData(recording, truth, truth_folder, annotation_s, annotation_pieces=annotation_pieces), str(recording_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS),
                        help="; ".join(f"{k}: {p.description}, {p.duration_s:g} s" for k, p in PRESETS.items()))
    source.add_argument("--recording", help="a recording SpikeInterface's load() reads, or a MEArec .h5 file")
    parser.add_argument("--ground-truth", help="the recording's ground-truth sorting (a saved SpikeInterface sorting)")
    parser.add_argument("--reference", help="agreement mode: a sorter name or a saved sorting that stands in for ground truth")
    parser.add_argument("--folder", default="esort_benchmark", help="results folder (default: esort_benchmark)")
    parser.add_argument("--sorters", nargs="+", default=list(SORTERS),
                        help=f"cases to run (default: {' '.join(SORTERS)}); any installed sorter name works")
    parser.add_argument("--teacher", default="spykingcircus2", help="esort_teacher's annotation sorter")
    parser.add_argument("--ensemble", nargs="+", default=list(ENSEMBLE),
                        help=f"esort_ensemble's annotation sorters (default: {' '.join(ENSEMBLE)})")
    parser.add_argument("--ensemble-unmatched-units", choices=("keep", "drop"), default="keep",
                        help="esort_ensemble's ensemble_unmatched_units (default: keep)")
    parser.add_argument("--self-training-rounds", type=int, default=1,
                        help="esort_self_training's self_training_rounds (default: 1)")
    parser.add_argument("--duration", type=float, help="preset duration (s)")
    parser.add_argument("--annotation-s", type=float,
                        help="annotation window (s; default: half the recording; for 'long', esort's default window)")
    parser.add_argument("--annotation-pieces", type=int,
                        help="the annotation window in this many pieces spread over the recording, as esort's "
                             "train_pieces (default: 1; for 'long', esort's default)")
    parser.add_argument("--bin-s", type=float, default=60.0,
                        help="held-out accuracy is also given per time bin of this length (s; default 60)")
    parser.add_argument("--seed", type=int, default=0, help="preset generator seed")
    parser.add_argument("--n-jobs", type=int, help="CPU jobs for every sorter (default: all cores)")
    parser.add_argument("--rerun", nargs="*", metavar="CASE",
                        help="run these cases again (all when none is named) even if already run in --folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).absolute()
    n_jobs = args.n_jobs or os.cpu_count() or 1
    if args.preset:
        data, description = preset_data(args.preset, folder, args.duration, args.annotation_s, args.seed,
                                        args.annotation_pieces)
    else:
        data, description = user_data(args.recording, folder, args.ground_truth, args.reference, args.annotation_s,
                                      n_jobs=n_jobs, annotation_pieces=args.annotation_pieces or 1)
    sorters = [s for s in args.sorters if not (data.agreement and s in ("esort_ground_truth", "esort_published"))]
    command = " ".join(["python -m spikeinterface_esort.tools.benchmark"] + (sys.argv[1:] if argv is None else list(argv)))
    rerun = False if args.rerun is None else (args.rerun or True)
    table = run_benchmark(data, folder, sorters, args.teacher, n_jobs, rerun, description, command, args.bin_s,
                          tuple(args.ensemble), args.ensemble_unmatched_units, args.self_training_rounds)
    print()
    print(markdown_table(table))
    print(f"results: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
