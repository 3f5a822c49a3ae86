"""The trained model as an object: load it from the sorter folder, sort another recording of the same
probe without annotations, fine-tune it on a few annotations, and refuse recordings it does not fit."""

import numpy as np
import pytest
import spikeinterface.full as si

from spikeinterface_esort import ESortModel


def test_saved_model_sorts_like_the_sorter_that_trained_it(small_recording, small_esort_run, tmp_path):
    recording = small_recording[0]
    folder, sorting = small_esort_run
    model = ESortModel.load(folder)
    assert list(model.unit_ids) == list(sorting.unit_ids)
    again = model.sort(recording, folder=tmp_path / "resorted")
    np.testing.assert_array_equal(again.to_spike_vector(), sorting.to_spike_vector())
    assert (tmp_path / "resorted" / "sorting").is_dir() and (tmp_path / "resorted" / "esort.log").is_file()
    # the model folder round-trips
    model.save(tmp_path / "copy")
    copy = ESortModel.load(tmp_path / "copy")
    np.testing.assert_array_equal(copy.thresholds, model.thresholds)
    assert copy.params == model.params


def test_model_refuses_recordings_it_does_not_fit(small_recording, small_esort_run):
    recording = small_recording[0]
    model = ESortModel.load(small_esort_run[0])
    with pytest.raises(ValueError, match="sampled at 20000"):
        model.sort(si.resample(recording, 20000))
    with pytest.raises(ValueError, match="reads 8 channels; the recording has 6"):
        model.sort(recording.select_channels(recording.channel_ids[:6]))
    reordered = recording.select_channels(recording.channel_ids[::-1])
    reordered = reordered.rename_channels(recording.channel_ids)
    with pytest.raises(ValueError, match="channel layout differs"):
        model.sort(reordered)
    # the same probe translated as a whole is the same layout
    moved = recording.clone()
    moved.set_dummy_probe_from_locations(recording.get_channel_locations() + np.array([100.0, 500.0]))
    model.check_recording(moved)


def test_fine_tune_attaches_a_new_head_for_the_new_annotations(small_recording, small_esort_run, tmp_path):
    recording, ground_truth, _ = small_recording
    model = ESortModel.load(small_esort_run[0])
    kept = ground_truth.unit_ids[:3]
    annotations = ground_truth.select_units(kept)
    tuned = model.fine_tune(recording, annotations, folder=tmp_path / "tuned", train_duration_s=8.0, epochs=3, seed=1,
                            annotated_spikes_per_unit=20)
    assert list(tuned.unit_ids) == list(kept) and tuned.network.num_units == 3
    assert tuned.network.num_units != model.network.num_units
    # the original model is unchanged; the new one starts from its backbone and says so
    np.testing.assert_array_equal(ESortModel.load(small_esort_run[0]).thresholds, model.thresholds)
    log = (tmp_path / "tuned" / "esort.log").read_text()
    assert "transfer: from backbone the saved model" in log and "first 20 per unit" in log
    assert "freeze_layers auto -> backbone" in log  # few-shot from the whole saved backbone: only the head trains
    assert (tmp_path / "tuned" / "model" / "weights.pt").is_file()
    sorting = tuned.sort(recording)
    assert list(sorting.unit_ids) == list(kept) and sorting.to_spike_vector().size > 0


def test_fine_tune_refuses_annotations_of_another_rate(small_recording, small_esort_run):
    recording, ground_truth, _ = small_recording
    model = ESortModel.load(small_esort_run[0])
    other = si.NumpySorting.from_unit_dict({0: np.array([100, 200])}, sampling_frequency=20000.0)
    with pytest.raises(ValueError, match="sampling frequency"):
        model.fine_tune(recording, other)


def test_a_previous_run_is_a_backbone_for_pretrained_weights(small_esort_run):
    from spikeinterface_esort.transfer import load_backbone

    folder = small_esort_run[0]
    for path in (folder, folder / "sorter_output", folder / "sorter_output" / "model"):
        backbone = load_backbone(path)
        assert backbone.channel_locations.shape == (8, 2) and "head.weight" not in backbone.state


def test_model_files_keep_loading_and_a_newer_format_is_refused(small_esort_run, tmp_path):
    """The format policy of docs/user-guide.md: the oldest format that holds the model is written; every format up
    to the installed one loads; a newer one is refused with a clear error."""
    import json
    import shutil

    import torch

    from spikeinterface_esort.network import ESortNetwork

    model = ESortModel.load(small_esort_run[0])
    assert json.loads((small_esort_run[0] / "sorter_output" / "model" / "model.json").read_text())["format_version"] == 2
    # a dense (published) network is written as format 1, and loads to the same probabilities
    dense = ESortModel.load(small_esort_run[0])
    dense.network = ESortNetwork(len(model.channel_ids), model.window_samples, len(model.unit_ids)).eval()
    dense.save(tmp_path / "dense")
    assert json.loads((tmp_path / "dense" / "model.json").read_text())["format_version"] == 1
    traces = torch.randn(3000, len(model.channel_ids))
    torch.testing.assert_close(ESortModel.load(tmp_path / "dense").probabilities(traces), dense.probabilities(traces))
    # a model written by a newer version
    shutil.copytree(small_esort_run[0] / "sorter_output" / "model", tmp_path / "newer")
    card = json.loads((tmp_path / "newer" / "model.json").read_text())
    card["format_version"] = 99
    (tmp_path / "newer" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="format 99.*upgrade"):
        ESortModel.load(tmp_path / "newer")
