"""Transfer learning: the shipped backbones, what transfers to which probe, and bad pretrained weights."""

import json

import numpy as np
import pytest
import spikeinterface.full as si
import torch

import spikeinterface_esort
from spikeinterface_esort.network import ESortNetwork
from spikeinterface_esort.transfer import load_backbone, pretrained_folder, resolve_backbone, transfer_backbone


@pytest.mark.parametrize("name", ["grid-32ch-30khz", "np1-384ch-30khz"])
def test_shipped_backbones_are_small_and_carry_their_card(name):
    folder = pretrained_folder()
    assert name in spikeinterface_esort.available_backbones()
    assert (folder / f"{name}.pt").stat().st_size < 5e6
    card = json.loads((folder / f"{name}.json").read_text())
    assert card["command"].startswith("python -m spikeinterface_esort.pretrain")
    assert len(card["channel_locations"]) == card["num_channels"]
    assert card["validation"]["mean_accuracy"] > 0.7
    assert (folder / f"{name}.md").read_text().count(card["command"]) == 1
    state = torch.load(folder / f"{name}.pt", weights_only=True)
    assert not any(k.startswith("head.") for k in state)


def test_same_layout_transfers_the_whole_backbone(ground_truth_recording):
    recording = ground_truth_recording[0]
    locations, fs = recording.get_channel_locations(), recording.get_sampling_frequency()
    backbone = resolve_backbone("auto", locations, fs)
    assert backbone.name == "grid-32ch-30khz"
    network = ESortNetwork(32, 60, 5)
    report = transfer_backbone(network, backbone, locations, fs)
    assert report["from_scratch"] == ["head"] and not report["adapted"]
    torch.testing.assert_close(network.spatial.weight, backbone.state["spatial.weight"])


def test_other_probe_keeps_the_temporal_filters_and_trains_the_spatial_stage(small_recording):
    recording = small_recording[0]  # 8 channels
    backbone = resolve_backbone("auto", recording.get_channel_locations(), 30000.0)
    network = ESortNetwork(8, 60, 4)
    before = network.spatial.weight.clone()
    report = transfer_backbone(network, backbone, recording.get_channel_locations(), 30000.0)
    assert report["transferred"] == ["temporal1", "temporal2"]
    assert report["from_scratch"] == ["spatial", "spatial_norm", "head"]
    torch.testing.assert_close(network.spatial.weight, before)
    # another window length: the temporal filters are resampled in time
    network = ESortNetwork(8, 40, 4)
    report = transfer_backbone(network, backbone, recording.get_channel_locations(), 20000.0)
    assert any("resampled 60 -> 40" in a for a in report["adapted"])


def test_run_sorter_from_pretrained_weights_logs_what_it_transferred(small_recording, tmp_path):
    recording, _, gt_folder = small_recording
    si.run_sorter("esort", recording, folder=tmp_path / "out", annotation_sorting_path=str(gt_folder),
                  train_duration_s=8.0, epochs=2, pretrained_weights="auto", freeze_layers="temporal")
    log = (tmp_path / "out" / "sorter_output" / "esort.log").read_text()
    assert "transfer: from backbone grid-32ch-30khz: transferred ['temporal1', 'temporal2']" in log
    assert "trained from scratch ['spatial', 'spatial_norm', 'head']" in log
    assert "frozen layers ['temporal1', 'temporal2']" in log


def test_bad_pretrained_weights_are_refused_before_training(small_recording, tmp_path):
    recording, _, gt_folder = small_recording
    common = dict(folder=tmp_path / "out", annotation_sorting_path=str(gt_folder), train_duration_s=8.0,
                  remove_existing_folder=True)
    with pytest.raises(ValueError, match="not a shipped backbone"):
        si.run_sorter("esort", recording, pretrained_weights="np2-probe", **common)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    (tmp_path / "corrupt.json").write_text(json.dumps({"network": {}}))
    with pytest.raises(ValueError, match="cannot read"):
        si.run_sorter("esort", recording, pretrained_weights=str(corrupt), **common)
    (tmp_path / "alone.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a backbone"):
        si.run_sorter("esort", recording, pretrained_weights=str(tmp_path / "alone.pt"), **common)
    with pytest.raises(ValueError, match="freeze_layers"):
        si.run_sorter("esort", recording, freeze_layers="all", **common)


def test_few_shot_training_uses_only_the_first_k_spikes_of_each_unit(small_recording, tmp_path):
    recording, ground_truth, gt_folder = small_recording
    sorting = si.run_sorter("esort", recording, folder=tmp_path / "out", annotation_sorting_path=str(gt_folder),
                            train_duration_s=8.0, epochs=2, annotated_spikes_per_unit=5)
    assert (sorting.get_property("esort_training_spikes") == 5).all()
    assert np.allclose(sorting.get_property("esort_threshold"), 0.5)
    assert "(first 5 per unit)" in (tmp_path / "out" / "sorter_output" / "esort.log").read_text()


def test_pretrain_command_writes_a_backbone_the_sorter_can_load(tmp_path):
    from spikeinterface_esort.pretrain import main

    main(["--layout", "grid", "--channels", "8", "--seeds", "1", "2", "--units", "3", "--duration", "6",
          "--epochs", "2", "--out", str(tmp_path / "out"), "--work-folder", str(tmp_path / "work")])
    card = json.loads((tmp_path / "out" / "grid-8ch-30khz.json").read_text())
    assert card["training_data"]["seeds"] == [1, 2] and card["training_data"]["noise_levels_uv"] == [5.0, 10.0]
    assert len(card["validation"]["recordings"]) == 2 and card["recipe"]["epochs_run"] == 2
    backbone = load_backbone(tmp_path / "out" / "grid-8ch-30khz.pt")
    assert backbone.channel_locations.shape == (8, 2) and backbone.window_samples == 60
    assert "--channels 8" in (tmp_path / "out" / "grid-8ch-30khz.md").read_text()


def test_annotation_reduction_reads_the_curves():
    import pandas as pd

    from spikeinterface_esort.fewshot import annotation_reduction, summary_table

    rows = [dict(k=str(k), init=init, seed=s, accuracy=acc)
            for k, (scratch, pretrained) in {5: (0.5, 0.7), 10: (0.6, 0.8), 20: (0.9, 0.95)}.items()
            for init, acc in (("scratch", scratch), ("pretrained", pretrained)) for s in (0, 1)]
    _, stats = summary_table(pd.DataFrame(rows), [5, 10, 20])
    lines = annotation_reduction(stats, [5, 10, 20])
    assert "at least 50% fewer" in lines[0]  # pretrained at 5 (0.7) beats scratch at 10 (0.6)
    assert "k~16.7" in lines[1]  # 0.9 reached between 10 (0.8) and 20 (0.95)
