"""On a long recording the training window is cut into pieces spread over it, so that the network sees every
unit wherever the probe has drifted; annotations land on the same traces whichever way they arrive."""

import json

import numpy as np
import spikeinterface.full as si
from spikeinterface.core import NumpySorting

import spikeinterface_esort  # noqa: F401  (registers "esort")
from spikeinterface_esort.annotation import TrainingWindow, sorting_to_annotations, training_pieces_s, training_window
from spikeinterface_esort.tools.datasets import held_out_performance
from spikeinterface_esort.parameters import default_params


def test_default_window_is_spread_only_over_a_long_recording():
    params = default_params()
    ten_minutes = training_pieces_s(600.0, params)
    assert len(ten_minutes) == 12 and ten_minutes[0] == (0.0, 5.0) and ten_minutes[-1] == (595.0, 600.0)
    assert np.allclose(np.diff([a for a, _ in ten_minutes]), 595.0 / 11)
    assert training_pieces_s(200.0, params) == [(0.0, 60.0)]  # shorter than 4 windows: one piece
    assert training_pieces_s(40.0, params) == [(0.0, 20.0)]
    assert training_pieces_s(600.0, dict(params, train_pieces=1)) == [(0.0, 60.0)]


def test_validation_covers_the_end_of_every_piece():
    window = TrainingWindow(((0, 100), (500, 600), (900, 1000)), validation_fraction=0.2)
    assert window.parts() == [(0, 80), (500, 580), (900, 980), (80, 100), (580, 600), (980, 1000)]
    assert window.num_training_samples == 240 and window.num_samples == 300
    assert window.validation_parts() == [(80, 100), (580, 600), (980, 1000)]
    inside, frames = window.to_training_frames(np.array([5, 85, 450, 590, 999, 1000]))
    assert inside.tolist() == [True, True, False, True, True, False] and frames.tolist() == [5, 245, 270, 299]
    inside, frames = window.from_pieces_frames(np.array([0, 150, 299, 300]))
    assert inside.tolist() == [True, True, True, False] and frames.tolist() == [0, 550, 999]


def test_annotations_point_at_the_same_traces_from_ground_truth_or_from_the_teacher(ground_truth_recording):
    recording, ground_truth, _ = ground_truth_recording
    params = dict(default_params(), train_duration_s=12.0, train_pieces=3)
    window = training_window(recording, params)
    assert [(a / 30000, b / 30000) for a, b in window.pieces] == [(0.0, 4.0), (18.0, 22.0), (36.0, 40.0)]
    from_truth = sorting_to_annotations(ground_truth, window, "ground truth")
    # a teacher sorts the pieces end to end: the same spikes in that recording's frames
    spikes = ground_truth.to_spike_vector()
    inside, teacher_frames = _pieces_frames(window, spikes["sample_index"])
    teacher = NumpySorting.from_samples_and_labels(
        [teacher_frames], [ground_truth.unit_ids[spikes["unit_index"][inside]]], 30000.0, unit_ids=ground_truth.unit_ids
    )
    from_teacher = sorting_to_annotations(teacher, window, "teacher", teacher=True)
    np.testing.assert_array_equal(from_truth.sample_index, from_teacher.sample_index)
    np.testing.assert_array_equal(from_truth.unit_index, from_teacher.unit_index)
    expected = np.sum([np.sum((spikes["sample_index"] >= a) & (spikes["sample_index"] < b)) for a, b in window.pieces])
    assert len(from_truth.sample_index) == expected > 100
    # the training recording holds, at each annotation, the traces of segment 0 at that spike
    training = window.training_recording(recording).get_traces(return_in_uV=False)
    whole = recording.get_traces(return_in_uV=False)
    first_of_each_part = [np.argmax(from_truth.sample_index >= n) for n in (0, window.num_training_samples)]
    spike_frames = set(spikes["sample_index"].tolist())
    for i in first_of_each_part + [len(from_truth.sample_index) - 1]:
        frame = from_truth.sample_index[i]
        absolute = window.parts()[_part_of(window, frame)][0] + frame - _part_offset(window, frame)
        assert absolute in spike_frames
        np.testing.assert_array_equal(training[frame], whole[absolute])


def test_sort_with_the_window_in_pieces(ground_truth_recording, tmp_path):
    recording, ground_truth, gt_folder = ground_truth_recording
    folder = tmp_path / "esort_output"
    sorting = si.run_sorter("esort", recording, folder=folder, annotation_sorting_path=str(gt_folder),
                            train_duration_s=12.0, train_pieces=3)
    pieces = [(18 * 30000, 22 * 30000), (36 * 30000, 40 * 30000)]
    performance = held_out_performance(sorting, ground_truth, 4 * 30000, excluded=pieces)
    assert performance["accuracy"].mean() >= 0.85, performance
    log = (folder / "sorter_output" / "esort.log").read_text()
    assert "training window: 12.0 s in 3 pieces of 4 s starting at 0, 18, 36 s" in log
    validation = json.loads((folder / "sorter_output" / "validation.json").read_text())
    fs = 30000
    assert validation["frame_ranges"] == [[int(3.2 * fs), 4 * fs], [int(21.2 * fs), 22 * fs], [int(39.2 * fs), 40 * fs]]
    assert validation["frame_range"] is None
    assert all(unit["validation_spikes"] > 0 for unit in validation["units"])


def _pieces_frames(window: TrainingWindow, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = np.zeros(len(frames), dtype=bool)
    out = np.zeros(len(frames), dtype=np.int64)
    offset = 0
    for a, b in window.pieces:
        here = (frames >= a) & (frames < b)
        inside |= here
        out[here] = frames[here] - a + offset
        offset += b - a
    return inside, out[inside]


def _part_of(window: TrainingWindow, frame: int) -> int:
    ends = np.cumsum([b - a for a, b in window.parts()])
    return int(np.searchsorted(ends, frame, side="right"))


def _part_offset(window: TrainingWindow, frame: int) -> int:
    lengths = [b - a for a, b in window.parts()]
    return int(sum(lengths[: _part_of(window, frame)]))
