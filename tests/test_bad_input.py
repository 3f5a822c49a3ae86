"""Every way a recording or a parameter can be wrong ends in a clear error, raised before long work,
and never in a sorting that loads as if complete."""

import json

import numpy as np
import pytest
import spikeinterface.full as si
from spikeinterface.core import NumpyRecording, NumpySorting

import spikeinterface_esort  # noqa: F401  (registers "esort")


def gt_params(gt_folder, **extra):
    return dict(annotation_sorting_path=str(gt_folder), train_duration_s=6.0, epochs=2, **extra)


def test_recording_without_probe_is_refused(tmp_path):
    recording = NumpyRecording([np.zeros((30000, 4), dtype="float32")], 30000.0)
    with pytest.raises(RuntimeError, match="Channel locations are required"):
        si.run_sorter("esort", recording, folder=tmp_path / "out")


def test_sampling_rate_too_low_for_the_window(small_recording, tmp_path):
    recording, _, gt_folder = small_recording
    with pytest.raises(ValueError, match="'window_ms'=0.1 gives 3 samples at 30000 Hz"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(gt_folder, window_ms=0.1))


@pytest.mark.parametrize(
    "window, message",
    [
        (dict(train_duration_s=60.0), "longer than the first segment"),
        (dict(train_start_s=20.0), "'train_start_s'=20.0 s is outside the first segment"),
        (dict(train_pieces=0), "'train_pieces'"),
        (dict(train_pieces=10**7), "has an empty piece; lengthen 'train_duration_s' or lower 'train_pieces'"),
    ],
)
def test_training_window_outside_the_recording(small_recording, tmp_path, window, message):
    recording, _, gt_folder = small_recording
    params = dict(gt_params(gt_folder), **window)
    with pytest.raises(ValueError, match=message):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **params)


def test_teacher_sorter_not_installed(small_recording, tmp_path):
    recording, _, _ = small_recording
    with pytest.raises(ValueError, match="'annotation_sorter'='kilosort2' is not installed"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", annotation_sorter="kilosort2")


def test_teacher_sorter_that_fails_is_reported(small_recording, tmp_path):
    recording, _, _ = small_recording
    folder = tmp_path / "out"
    with pytest.raises(Exception, match="annotation sorter 'simple' failed on the training window"):
        si.run_sorter("esort", recording, folder=folder, annotation_sorter="simple",
                      annotation_sorter_params=dict(clusterer="no-such-clusterer"), train_duration_s=6.0)
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert log["error"] and not (folder / "sorter_output" / "sorting").exists()
    with pytest.raises(Exception, match="Spike sorting failed"):
        si.read_sorter_folder(folder)
    # a re-run in the same folder works
    sorting = si.run_sorter("esort", recording, folder=folder, remove_existing_folder=True, **gt_params(small_recording[2]))
    assert sorting.to_spike_vector().size > 0


def test_annotations_with_no_spike_in_the_window(small_recording, tmp_path):
    recording, ground_truth, _ = small_recording
    late = NumpySorting.from_samples_and_labels([np.array([300000, 300100])], [np.array([0, 0])], 30000.0)
    late.save(folder=tmp_path / "late")
    with pytest.raises(Exception, match="have no spike in the training window"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(tmp_path / "late"))


def test_annotations_without_any_unit(small_recording, tmp_path):
    """What a teacher sorter that finds no unit leaves: an empty sorting."""
    recording, _, _ = small_recording
    empty = NumpySorting.from_samples_and_labels([np.zeros(0, dtype="int64")], [np.zeros(0, dtype="int64")], 30000.0, unit_ids=[])
    empty.save(folder=tmp_path / "empty")
    with pytest.raises(Exception, match="have no spike in the training window"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(tmp_path / "empty"))


@pytest.mark.parametrize(
    "sampling_frequency, segments, message",
    [(20000.0, 1, "sampling frequency 20000.0 Hz does not match the recording's 30000.0 Hz"),
     (30000.0, 2, "2 segment\\(s\\), but the recording has 1")],
)
def test_annotations_that_do_not_fit_the_recording(small_recording, tmp_path, sampling_frequency, segments, message):
    recording, _, _ = small_recording
    other = NumpySorting.from_samples_and_labels(
        [np.array([100, 200])] * segments, [np.array([0, 0])] * segments, sampling_frequency
    )
    other.save(folder=tmp_path / "other")
    with pytest.raises(ValueError, match=message):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(tmp_path / "other"))


def test_annotation_path_that_is_not_a_sorting(small_recording, tmp_path):
    recording, _, _ = small_recording
    with pytest.raises(ValueError, match="does not exist"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(tmp_path / "nowhere"))
    recording.save(folder=tmp_path / "a_recording", progress_bar=False)  # a recording folder, not a sorting
    with pytest.raises(ValueError, match="not a sorting"):
        si.run_sorter("esort", recording, folder=tmp_path / "out2", **gt_params(tmp_path / "a_recording"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="is not a SpikeInterface sorting folder"):
        si.run_sorter("esort", recording, folder=tmp_path / "out3", **gt_params(tmp_path / "empty_folder"))


def test_nan_samples_are_refused(small_recording, tmp_path):
    recording, _, gt_folder = small_recording
    traces = recording.get_traces().copy()
    traces[50000:50010, 3] = np.nan
    broken = NumpyRecording([traces], recording.sampling_frequency)
    broken.set_probe(recording.get_probe(), in_place=True)
    broken = broken.save(folder=tmp_path / "broken", progress_bar=False)
    folder = tmp_path / "out"
    with pytest.raises(Exception, match="NaN or infinite samples in segment 0"):
        si.run_sorter("esort", broken, folder=folder, **gt_params(gt_folder))
    assert not (folder / "sorter_output" / "sorting").exists()


def test_cuda_without_gpu_is_refused(small_recording, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recording, _, gt_folder = small_recording
    with pytest.raises(ValueError, match="'torch_device'='cuda', but torch sees no CUDA GPU"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(gt_folder, torch_device="cuda"))
    with pytest.raises(ValueError, match="'inference_dtype'='float16' needs a CUDA device"):
        si.run_sorter("esort", recording, folder=tmp_path / "out_fp16", **gt_params(gt_folder, inference_dtype="float16"))


def test_int16_recording_with_gains(small_recording, tmp_path):
    """Real probes store int16 with a gain to uV: esort sorts it as well as the float32 original."""
    recording, ground_truth, gt_folder = small_recording
    gain = 0.195
    as_int16 = si.scale(recording, gain=1.0 / gain, dtype="int16")
    as_int16.set_channel_gains(gain)
    as_int16.set_channel_offsets(0.0)
    as_int16 = as_int16.save(folder=tmp_path / "int16", progress_bar=False)
    assert as_int16.get_dtype() == np.int16
    params = dict(annotation_sorting_path=str(gt_folder), train_duration_s=6.0)
    sorting = si.run_sorter("esort", as_int16, folder=tmp_path / "out", **params)
    half = recording.get_num_samples() // 2
    comparison = si.compare_sorter_to_ground_truth(ground_truth.frame_slice(half, None), sorting.frame_slice(half, None))
    assert comparison.get_performance()["accuracy"].astype(float).mean() > 0.8


def test_units_without_spikes_are_named_and_a_sort_without_any_spike_fails(small_recording, tmp_path):
    from spikeinterface_esort.inference import DetectedSpikes
    from spikeinterface_esort.output import check_spike_counts

    detected = DetectedSpikes(*(np.array(v) for v in ([10, 20], [0, 0], [0, 2], [0.9, 0.8])))
    with pytest.warns(UserWarning, match=r"no spike for 2 of 4 units \(b, d\); their detection thresholds: 0.60, 0.80"):
        check_spike_counts(detected, np.array(["a", "b", "c", "d"]), np.array([0.5, 0.6, 0.7, 0.8]), True)
    # a threshold no probability reaches: every unit silent is an error, with the model kept for inspection
    recording, _, gt_folder = small_recording
    with pytest.raises(Exception, match="esort found no spike for 4 of 4 units") as error:
        si.run_sorter("esort", recording, folder=tmp_path / "out", **gt_params(gt_folder, detection_threshold=0.999999))
    assert "validation.json" in str(error.value)
    output = tmp_path / "out" / "sorter_output"
    assert (output / "model" / "model.json").is_file() and not (output / "sorting").exists()
    assert "ERROR esort found no spike" in (output / "esort.log").read_text()
