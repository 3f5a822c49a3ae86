"""Cleaning a teacher's units with SpikeInterface's curation before training (annotation_curation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spikeinterface.full as si

import spikeinterface_esort  # noqa: F401
from spikeinterface_esort.annotation import Annotations, sorting_to_annotations, training_window
from spikeinterface_esort.annotation_curation import TEACHER_CURATION, curate_annotations, resolve_annotation_curation
from spikeinterface_esort.parameters import default_params, validate_params
from spikeinterface_esort.preprocessing import preprocess


def as_sorting(annotations: Annotations, fs: float) -> si.NumpySorting:
    labels = annotations.unit_ids[annotations.unit_index]
    return si.NumpySorting.from_samples_and_labels([annotations.sample_index], [labels], fs,
                                                   unit_ids=annotations.unit_ids)


def test_curation_merges_a_split_unit_and_removes_a_noise_unit(ground_truth_recording, tmp_path):
    """A teacher that split the busiest neuron in two and reported a unit of random times: after curation the
    split is one unit again (SpikeInterface's 'x_contaminations' auto-merge), the noise unit is gone (SNR), and the annotations match the ground truth better."""
    recording, truth, _ = ground_truth_recording
    fs = recording.get_sampling_frequency()
    params = dict(default_params(), train_duration_s=30.0)
    window = training_window(recording, params)
    exact = sorting_to_annotations(truth, window, source="ground truth")

    busiest = int(np.argmax(exact.spike_counts()))
    rng = np.random.default_rng(0)
    its_spikes = np.flatnonzero(exact.unit_index == busiest)
    split = exact.unit_index.copy()
    split[its_spikes[rng.random(len(its_spikes)) < 0.5]] = exact.num_units  # half its spikes, at random: a new unit
    noise_frames = np.sort(rng.choice(np.arange(100, window.num_samples - 100), size=900, replace=False))
    samples = np.concatenate([exact.sample_index, noise_frames])
    units = np.concatenate([split, np.full(len(noise_frames), exact.num_units + 1)])
    order = np.argsort(samples, kind="stable")
    unit_ids = np.concatenate([exact.unit_ids.astype(str), ["split half", "noise"]])
    teacher = Annotations(samples[order], units[order], unit_ids, source="a faulty teacher")

    curated = curate_annotations(
        teacher, window.training_recording(preprocess(recording, params)),
        dict(merge_presets=["x_contaminations"], unit_thresholds={"snr": {"greater": 1.0}}),  # one true unit: SNR 1.7
        tmp_path, dict(n_jobs=1, progress_bar=False),
    )

    report = json.loads((tmp_path / "annotation_curation.json").read_text())
    assert teacher.num_units == exact.num_units + 2
    assert curated.num_units == exact.num_units, report
    assert "noise" not in curated.unit_ids and "split half" not in curated.unit_ids
    np.testing.assert_array_equal(np.sort(curated.spike_counts()), np.sort(exact.spike_counts()))
    truth_sorting = as_sorting(exact, fs).rename_units(exact.unit_ids.astype(str))
    before = si.compare_sorter_to_ground_truth(truth_sorting, as_sorting(teacher, fs), exhaustive_gt=True)
    after = si.compare_sorter_to_ground_truth(truth_sorting, as_sorting(curated, fs), exhaustive_gt=True)
    busiest_id = str(exact.unit_ids[busiest])
    assert before.get_performance().loc[busiest_id, "accuracy"] < 0.6
    assert after.get_performance().loc[busiest_id, "accuracy"] == pytest.approx(1.0)
    assert after.count_false_positive_units() == 0 < before.count_false_positive_units()

    assert sorted(report["merges"][0]["units"]) == sorted([busiest_id, "split half"])
    assert report["failed_thresholds"] == ["noise"]
    assert report["units_before"] == exact.num_units + 2 and report["units_after"] == exact.num_units


def test_split_units_separates_two_neurons_a_teacher_merged(ground_truth_recording, tmp_path):
    """A teacher that gave the spikes of two distant neurons to one unit: 'split_units' (isosplit on the unit's
    waveforms, clusters of unlike mean waveform kept apart) gives each neuron its own unit again and splits no
    other unit."""
    recording, truth, _ = ground_truth_recording
    fs = recording.get_sampling_frequency()
    params = dict(default_params(), train_duration_s=30.0)
    window = training_window(recording, params)
    exact = sorting_to_annotations(truth, window, source="ground truth")
    locations = truth.get_property("gt_unit_locations")[:, :2]
    first = 0
    second = int(np.argmax(np.linalg.norm(locations - locations[first], axis=1)))  # the farthest neuron
    merged = exact.unit_index.copy()
    merged[merged == second] = first
    keep = np.array([u for u in range(exact.num_units) if u != second])
    remap = np.full(exact.num_units, -1)
    remap[keep] = np.arange(len(keep))
    teacher = Annotations(exact.sample_index, remap[merged], exact.unit_ids[keep], source="a teacher that merged")

    curated = curate_annotations(teacher, window.training_recording(preprocess(recording, params)),
                                 dict(split_units={}), tmp_path, dict(n_jobs=1, progress_bar=False))

    report = json.loads((tmp_path / "annotation_curation.json").read_text())
    assert [split["unit"] for split in report["splits"]] == [str(exact.unit_ids[first])], report["splits"]
    assert curated.num_units == exact.num_units
    truth_sorting = as_sorting(exact, fs)
    before = si.compare_sorter_to_ground_truth(truth_sorting, as_sorting(teacher, fs), exhaustive_gt=True)
    after = si.compare_sorter_to_ground_truth(truth_sorting, as_sorting(curated, fs), exhaustive_gt=True)
    two = [exact.unit_ids[first], exact.unit_ids[second]]
    assert before.get_performance().loc[two, "accuracy"].min() < 0.6
    assert after.get_performance().loc[two, "accuracy"].min() > 0.95
    assert after.get_performance()["accuracy"].mean() > 0.95


@pytest.mark.parametrize("curation, message", [
    (dict(merges=["similarity_correlograms"]), "unknown keys \\['merges'\\]"),
    (dict(merge_presets=["no-such-preset"]), "'merge_presets' must be a list of SpikeInterface auto-merge presets"),
    (dict(merge_steps_params={"no_step": {}}), "'merge_steps_params' must map auto-merge steps"),
    (dict(unit_thresholds={"snr": 3}), "'unit_thresholds' must map quality metric names"),
    (dict(remove_redundant="yes"), "'remove_redundant' must be True or False"),
    (dict(split_units={"similarity": 0.5}), "'split_units' must be a dict with any of"),
    (dict(split_units={"template_similarity": 1.5}), "'template_similarity' is in \\(0, 1\\]"),
    (dict(unit_thresholds={"isi_violation": {"less": 0.5}}), "not SpikeInterface quality metrics"),
])
def test_bad_annotation_curation_is_refused_before_any_work(small_recording, tmp_path, curation, message):
    recording, _, gt_folder = small_recording
    with pytest.raises(ValueError, match=message):
        si.run_sorter("esort", recording, folder=tmp_path / "out", annotation_sorting_path=str(gt_folder),
                      annotation_curation=curation)


def test_run_sorter_trains_on_the_curated_units(small_recording, tmp_path):
    """The user's story: a teacher's sorting saved to disk holds a unit of random times; run_sorter with
    annotation_curation drops it before training, says so in the log and the report, and sorts the true units."""
    recording, truth, _ = small_recording
    fs = recording.get_sampling_frequency()
    rng = np.random.default_rng(1)
    noise_frames = np.sort(rng.choice(np.arange(100, recording.get_num_samples() - 100), size=300, replace=False))
    spikes = truth.to_spike_vector()
    unit_ids = np.asarray(truth.unit_ids).astype(str)
    teacher = si.NumpySorting.from_samples_and_labels(
        [np.concatenate([spikes["sample_index"], noise_frames])],
        [np.concatenate([unit_ids[spikes["unit_index"]], np.full(len(noise_frames), "noise")])],
        fs,
    )
    teacher_folder = tmp_path / "teacher"
    teacher.save(folder=teacher_folder)

    sorting = si.run_sorter("esort", recording, folder=tmp_path / "out", annotation_sorting_path=str(teacher_folder),
                            train_duration_s=8.0, annotation_curation={"unit_thresholds": {"snr": {"greater": 1.0}}})

    assert sorted(map(str, sorting.unit_ids)) == sorted(unit_ids)
    report = json.loads((tmp_path / "out" / "sorter_output" / "annotation_curation.json").read_text())
    assert report["failed_thresholds"] == ["noise"]
    log = (tmp_path / "out" / "sorter_output" / "esort.log").read_text()
    assert "annotation curation:" in log and "noise" in log
    performance = si.compare_sorter_to_ground_truth(truth, sorting, exhaustive_gt=True).get_performance()
    assert performance["accuracy"].mean() > 0.8


def test_auto_curation_cleans_a_teacher_and_leaves_a_saved_sorting_as_given():
    """The default, 'auto': a teacher sorter's units are cleaned with TEACHER_CURATION, ground truth or a sorting the
    user curated is not touched; a dict or None is used as given."""
    params = default_params()
    assert params["annotation_curation"] == "auto" and params["annotation_sorting_path"] is None
    assert resolve_annotation_curation(params) == TEACHER_CURATION
    assert resolve_annotation_curation(dict(params, annotation_sorting_path="curated")) is None
    mine = {"remove_redundant": True}
    assert resolve_annotation_curation(dict(params, annotation_curation=mine)) == mine
    assert resolve_annotation_curation(dict(params, annotation_curation=None)) is None
    with pytest.raises(ValueError, match="annotation_curation"):
        validate_params(dict(params, annotation_curation="yes"))
