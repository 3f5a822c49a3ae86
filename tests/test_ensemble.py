"""Teacher ensembles: several sorters' annotations combined (spikeinterface_esort.ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
import spikeinterface.full as si
from spikeinterface.core import NumpySorting

import spikeinterface_esort  # noqa: F401
from spikeinterface_esort.ensemble import combine_sortings, group_events, nearest_offsets

FS = 30000.0


def sorting_from(trains: dict) -> NumpySorting:
    return NumpySorting.from_unit_dict([{u: np.asarray(t, dtype=np.int64) for u, t in trains.items()}], FS)


@pytest.fixture
def two_teachers():
    """Teacher A finds units a0 and a1; teacher B finds a0 (90% of its spikes, 2 samples late) and a unit A
    missed; a1 is only A's."""
    rng = np.random.default_rng(0)
    train0 = np.sort(rng.choice(np.arange(100, 600000, 60), size=300, replace=False))
    train1 = np.sort(rng.choice(np.arange(130, 600000, 60), size=200, replace=False))
    extra = np.sort(rng.choice(np.arange(150, 600000, 60), size=150, replace=False))
    missed = rng.random(len(train0)) < 0.1
    a = sorting_from({"a0": train0, "a1": train1})
    b = sorting_from({"b0": train0[~missed] + 2, "b1": extra})
    return a, b, train0, train1, extra, missed


def test_ensemble_keeps_agreed_spikes_as_positives_and_leaves_one_sorter_spikes_out(two_teachers):
    a, b, train0, train1, extra, missed = two_teachers
    combined = combine_sortings({"A": a, "B": b}, unmatched_units="keep")
    assert combined.report["offsets_samples"] == {"A": 0, "B": 2}
    assert combined.report["matched_units"] == 1 and combined.report["unmatched_units_kept"] == 2
    assert combined.report["uncertain_spikes"] == int(missed.sum())
    matched = [i for i, s in enumerate(combined.sources) if len(s) == 2]
    assert combined.sources[matched[0]] == {"A": "a0", "B": "b0"}
    mine = combined.unit_index == matched[0]
    # one spike per event, in A's alignment; the ones B missed are uncertain
    np.testing.assert_array_equal(combined.sample_index[mine], train0)
    np.testing.assert_array_equal(combined.uncertain[mine], missed)
    # units only one sorter found are kept whole, B's in A's alignment
    only_b = [i for i, s in enumerate(combined.sources) if s == {"B": "b1"}][0]
    np.testing.assert_array_equal(combined.sample_index[combined.unit_index == only_b], extra - 2)
    assert not combined.uncertain[combined.unit_index != matched[0]].any()
    assert np.all(np.diff(combined.sample_index) >= 0)


def test_ensemble_drops_units_one_sorter_found_when_asked(two_teachers):
    a, b, *_ = two_teachers
    combined = combine_sortings({"A": a, "B": b}, unmatched_units="drop")
    assert combined.report["unmatched_units_dropped"] == 2
    assert combined.sources == [{"A": "a0", "B": "b0"}]
    with pytest.raises(ValueError, match="unmatched_units"):
        combine_sortings({"A": a, "B": b}, unmatched_units="sometimes")


def test_group_events_and_offsets():
    times = np.array([0, 3, 10, 40, 41, 100])
    sorters = np.array([0, 1, 0, 0, 0, 1])
    event, counts = group_events(times, sorters, delta=12)
    # (0, 3) one event; 10 from sorter 0 again starts a new one; 40 and 41 both sorter 0: two events
    np.testing.assert_array_equal(event, [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(counts, [2, 1, 1, 1, 1])
    np.testing.assert_array_equal(nearest_offsets(np.array([100, 200]), np.array([98, 203, 400]), 12), [-2, 3])


@pytest.mark.parametrize("params, message", [
    (dict(annotation_sorter=[]), "list of different sorter names"),
    (dict(annotation_sorter=["spykingcircus2", "spykingcircus2"]), "list of different sorter names"),
    (dict(annotation_sorter=["spykingcircus2", "not_a_sorter"]), "not installed"),
    (dict(annotation_sorter=["spykingcircus2", "tridesclous2"], annotation_sorter_params={"kilosort4": {}}),
     "maps each sorter"),
    (dict(annotation_sorter=["spykingcircus2", "tridesclous2"], ensemble_unmatched_units="sometimes"),
     "ensemble_unmatched_units"),
])
def test_bad_ensemble_parameters_are_refused_before_any_work(small_recording, tmp_path, params, message):
    recording, _, _ = small_recording
    with pytest.raises(Exception, match=message):
        si.run_sorter("esort", recording, folder=tmp_path / "out", train_duration_s=6.0, **params)


def test_uncertain_spikes_are_neither_positives_nor_negatives():
    from spikeinterface_esort.annotation import Annotations
    from spikeinterface_esort.training import TrainingSplit, make_samplers

    rng = np.random.default_rng(1)
    samples = np.sort(rng.choice(np.arange(100, 199900, 40), size=1000, replace=False))
    uncertain = rng.random(len(samples)) < 0.3
    annotations = Annotations(samples, np.zeros(len(samples), dtype=np.int64), np.array([0]), "test", uncertain)
    train, validation = make_samplers(annotations, TrainingSplit(0, 150000, 200000), window_samples=60, jitter=5)
    positives = set(train.anchor_samples.tolist()) | set(validation.anchor_samples.tolist())
    assert positives and not positives & set(samples[uncertain].tolist())
    centres, targets = train.draw(rng, 1, negative_ratio=2.0)
    negatives = centres[targets[:, 0] == 0]
    nearest = np.min(np.abs(negatives[:, None] - samples[None, samples < 150000]), axis=1)
    assert nearest.min() > 5  # no negative within the jitter of any spike, uncertain ones included


def test_sort_with_a_teacher_ensemble(ground_truth_recording, tmp_path):
    """spykingcircus2 and tridesclous2 annotate the first half; esort learns what they agree on."""
    import json

    recording, ground_truth, _ = ground_truth_recording
    folder = tmp_path / "esort_ensemble"
    teachers = ["spykingcircus2", "tridesclous2"]
    sorting = si.run_sorter("esort", recording, folder=folder, train_duration_s=20.0, annotation_sorter=teachers,
                            annotation_sorter_params={"tridesclous2": dict(job_kwargs=dict(n_jobs=1))})
    output = folder / "sorter_output"
    report = json.loads((output / "annotation_sorter" / "ensemble.json").read_text())
    for name in teachers:
        teacher = si.read_sorter_folder(output / "annotation_sorter" / name)
        assert report["sorters"][name] == len(teacher.unit_ids)
    assert report["matched_units"] >= 6 and report["uncertain_spikes"] > 0
    assert {str(u) for u in sorting.unit_ids} <= {str(u["unit_id"]) for u in report["units"]}
    log = (output / "esort.log").read_text()
    assert "annotation ensemble" in log and "from sorters spykingcircus2 + tridesclous2" in log
    half = recording.get_num_samples() // 2
    comparison = si.compare_sorter_to_ground_truth(ground_truth.frame_slice(half, None), sorting.frame_slice(half, None))
    perf = comparison.get_performance().astype(float)
    assert perf["accuracy"].mean() >= 0.6 and (perf["accuracy"] > 0.8).sum() >= 6, perf



def test_teachers_run_on_esorts_jobs_unless_told_otherwise():
    """SpikeInterface's own sorters get esort's job_kwargs (its n_jobs), not SpikeInterface's global one job; a
    teacher's own job_kwargs win; a sorter without job_kwargs gets none."""
    from spikeinterface_esort.annotation import teacher_params
    from spikeinterface_esort.parameters import default_params

    import os

    assert teacher_params(default_params(), "spykingcircus2")["job_kwargs"]["n_jobs"] == os.cpu_count()  # esort's -1
    params = dict(default_params(), job_kwargs={"n_jobs": 1, "chunk_duration": "0.5s"})
    assert teacher_params(params, "tridesclous2")["job_kwargs"]["chunk_duration"] == "0.5s"
    params["annotation_sorter_params"] = {"job_kwargs": {"n_jobs": 1}, "apply_motion_correction": False}
    assert teacher_params(params, "spykingcircus2") == {"job_kwargs": {"n_jobs": 1}, "apply_motion_correction": False}
    params = dict(default_params(), job_kwargs={"n_jobs": 1, "chunk_duration": "0.5s"},
                  annotation_sorter=["spykingcircus2", "kilosort4"],
                  annotation_sorter_params={"kilosort4": {"batch_size": 30000}})
    assert teacher_params(params, "kilosort4") == {"batch_size": 30000}  # kilosort4 takes no job_kwargs
    assert teacher_params(params, "spykingcircus2")["job_kwargs"]["chunk_duration"] == "0.5s"
