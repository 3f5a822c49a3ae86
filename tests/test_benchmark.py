"""The benchmark, as a user runs it: sorters through run_sorter on a ground-truth recording, scored on the
held-out part only; results, table and plots written; a failing sorter reported, not fatal; agreement mode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from spikeinterface.core import NumpySorting

from spikeinterface_esort.tools.benchmark import BenchmarkData, held_out_comparison, main, run_benchmark, user_data


def test_held_out_scoring_ignores_the_annotation_window(small_recording):
    recording, truth, _ = small_recording
    start, end = 6 * 30000, recording.get_num_samples()
    spikes = truth.to_spike_vector()
    in_window = spikes[spikes["sample_index"] < start]
    only_window = NumpySorting.from_samples_and_labels(
        [in_window["sample_index"]], [truth.unit_ids[in_window["unit_index"]]], truth.sampling_frequency,
        unit_ids=truth.unit_ids)
    assert held_out_comparison(truth, truth, start, end).get_performance()["accuracy"].min() == 1.0
    assert held_out_comparison(only_window, truth, start, end).get_performance()["recall"].max() == 0.0


@pytest.fixture(scope="module")
def benchmark_folder(small_recording, tmp_path_factory):
    """The command on the 8-channel recording: esort with ground truth, esort with a teacher that does not
    exist (fails), and SpikeInterface's 'simple' sorter."""
    _, _, gt_folder = small_recording
    folder = tmp_path_factory.mktemp("benchmark") / "out"
    main(["--recording", str(gt_folder.parent / "recording"),
          "--ground-truth", str(gt_folder), "--folder", str(folder), "--annotation-s", "8",
          "--sorters", "esort_ground_truth", "esort_teacher", "simple", "--teacher", "no_such_sorter"])
    return folder


def test_benchmark_writes_held_out_scores_table_and_plots(benchmark_folder, small_recording):
    recording, truth, _ = small_recording
    table = pd.read_csv(benchmark_folder / "results.csv").set_index("case")
    assert list(table.index) == ["esort_ground_truth", "esort_teacher", "simple"]
    esort = table.loc["esort_ground_truth"]
    assert esort["status"] == "ok" and esort["accuracy"] >= 0.8 and esort["num_truth_units"] == 4
    # the same figure as scoring the saved sorting by hand on the held-out 4 s
    from spikeinterface.core import load
    sorting = load(benchmark_folder / "study" / "sorters" / "esort_ground_truth" / "sorter_output" / "sorting")
    by_hand = held_out_comparison(sorting, truth, 8 * 30000, recording.get_num_samples()).get_performance()
    assert esort["accuracy"] == pytest.approx(by_hand["accuracy"].astype(float).mean())
    # esort's wall time split into its steps, within run_sorter's wall time
    steps = esort[["annotation_s", "training_s", "inference_s", "postprocessing_s"]].astype(float)
    assert (steps >= 0).all() and steps.sum() <= esort["run_time_s"] and esort["training_s"] > 0
    assert table.loc["simple", "status"] == "ok" and np.isnan(table.loc["simple", "training_s"])
    # a sorter that fails is a row saying so, with its log folder; the others ran
    failed = table.loc["esort_teacher"]
    assert failed["status"].startswith("failed") and "no_such_sorter" in failed["status"]
    units = pd.read_csv(benchmark_folder / "units.csv")
    assert len(units) == 2 * 4 and units["snr"].notna().all() and units["accuracy"].between(0, 1).all()
    report = (benchmark_folder / "results.md").read_text()
    assert "| esort (ground-truth annotations) | " in report and "| simple | " in report and "failed" in report
    assert ".0/" not in report  # counts print as integers beside a failed row
    assert "held-out 4 s" in report and "Command: `python -m spikeinterface_esort.tools.benchmark" in report
    info = json.loads((benchmark_folder / "results.json").read_text())["info"]
    assert info["annotation_s"] == 8 and info["scored_against"] == "ground truth"
    for png in ("accuracy_vs_snr.png", "run_time.png", "accuracy_vs_time.png"):
        assert (benchmark_folder / png).read_bytes()[:4] == b"\x89PNG"
    # peak memory of each run, and the held-out part scored again in time bins (one 4 s bin here)
    assert (table.loc[["esort_ground_truth", "simple"], "peak_rss_mb"] >= 100).all()
    timecourse = pd.read_csv(benchmark_folder / "timecourse.csv").set_index("case")
    assert list(timecourse.index) == ["esort_ground_truth", "simple"]
    assert timecourse.loc["esort_ground_truth", "accuracy"] == pytest.approx(esort["accuracy"])
    assert (timecourse["start_s"] == 8.0).all() and (timecourse["end_s"] == 12.0).all()
    # the table and plots can be drawn again from results.json alone
    from spikeinterface_esort.tools.benchmark import redraw
    (benchmark_folder / "results.md").unlink()
    redraw(benchmark_folder)
    assert (benchmark_folder / "results.md").read_text() == report


def test_benchmark_does_not_run_a_sorter_again(benchmark_folder, small_recording):
    recording, _, gt_folder = small_recording
    run_time_file = benchmark_folder / "study" / "results" / "simple" / "run_time.pickle"
    written = run_time_file.stat().st_mtime_ns
    before = pd.read_csv(benchmark_folder / "results.csv").set_index("case")
    data, _ = user_data(gt_folder.parent / "recording", benchmark_folder, gt_folder, annotation_s=8)
    table = run_benchmark(data, benchmark_folder, ["esort_ground_truth", "simple"]).set_index("case")
    assert run_time_file.stat().st_mtime_ns == written
    assert table.loc["simple", "accuracy"] == before.loc["simple", "accuracy"]
    # another annotation window (8 s in 2 pieces: 0-4 s and 8-12 s): scored again on 4-8 s, not run again
    spread, _ = user_data(gt_folder.parent / "recording", benchmark_folder, gt_folder, annotation_s=8, annotation_pieces=2)
    assert spread.held_out_start_frame == 4 * 30000 and spread.excluded_frames == ((8 * 30000, 12 * 30000),)
    table = run_benchmark(spread, benchmark_folder, ["simple"]).set_index("case")
    assert run_time_file.stat().st_mtime_ns == written
    assert table.loc["simple", "accuracy"] != before.loc["simple", "accuracy"]
    table = run_benchmark(data, benchmark_folder, ["esort_ground_truth", "simple"]).set_index("case")  # as before
    assert table.loc["simple", "accuracy"] == before.loc["simple", "accuracy"]


def test_agreement_mode_scores_against_the_reference(benchmark_folder, small_recording, tmp_path):
    """With the ground truth given as the reference sorting, agreement is the ground-truth accuracy: esort
    learns from the reference's annotation window, as from ground truth, with the same seed."""
    _, _, gt_folder = small_recording
    data, _ = user_data(gt_folder.parent / "recording", tmp_path, reference=str(gt_folder), annotation_s=8)
    assert data.agreement
    with pytest.raises(ValueError, match="esort_ground_truth needs a ground truth"):
        run_benchmark(data, tmp_path, ["esort_ground_truth"])
    table = run_benchmark(data, tmp_path, ["esort_teacher"]).set_index("case")
    truth_mode = pd.read_csv(benchmark_folder / "results.csv").set_index("case")
    assert table.loc["esort_teacher", "accuracy"] == pytest.approx(truth_mode.loc["esort_ground_truth", "accuracy"])
    assert "agreement with" in (tmp_path / "results.md").read_text()


def test_bad_benchmark_input(small_recording, multi_segment_recording, tmp_path):
    recording, truth, gt_folder = small_recording
    with pytest.raises(ValueError, match="annotation window"):
        run_benchmark(BenchmarkData(recording, truth, gt_folder, 30.0), tmp_path, ["simple"])
    with pytest.raises(ValueError, match="learn from scored data"):  # esort's default window is 6 s of 12 s
        run_benchmark(BenchmarkData(recording, truth, gt_folder, 5.0), tmp_path, ["esort"])
    recording2, truth2, gt_folder2 = multi_segment_recording
    with pytest.raises(ValueError, match="one-segment"):
        run_benchmark(BenchmarkData(recording2, truth2, gt_folder2, 5.0), tmp_path, ["simple"])
    with pytest.raises(ValueError, match="ground truth"):
        user_data(gt_folder.parent / "recording", tmp_path)


@pytest.mark.parametrize("preset, channels", [("small", 32), ("drifting", 32)])
def test_presets_are_saved_ground_truth_recordings(preset, channels, tmp_path):
    from spikeinterface_esort.tools.benchmark import preset_data

    data, description = preset_data(preset, tmp_path, duration_s=6.0)
    assert data.recording.get_num_channels() == channels and data.recording.get_total_duration() == 6.0
    assert data.annotation_s == 3.0 and data.held_out_start_frame == 90000
    assert (data.truth_folder / "si_folder.json").is_file() and len(data.truth.unit_ids) > 0
    assert preset in description
