"""Transfer learning: the shipped backbones, what transfers to which probe, and bad pretrained weights."""

import json

import numpy as np
import pytest
import spikeinterface.full as si
import torch

import spikeinterface_esort
from spikeinterface_esort.network import ESortNetwork
from spikeinterface_esort.transfer import (
    layout_order, load_backbone, pretrained_folder, resolve_backbone, transfer_backbone,
)


@pytest.mark.parametrize("name", ["grid-32ch-30khz", "np1-384ch-30khz"])
def test_shipped_backbones_are_small_and_carry_their_card(name):
    folder = pretrained_folder()
    assert name in spikeinterface_esort.available_backbones()
    assert (folder / f"{name}.pt").stat().st_size < 5e6
    card = json.loads((folder / f"{name}.json").read_text())
    assert card["command"].startswith("python -m spikeinterface_esort.tools.pretrain")
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


def test_auto_matches_a_neuropixels_recording_whatever_its_channel_order(caplog):
    """probeinterface's Neuropixels 1.0 probe lists its channels in electrode order, the shipped np1 backbone in
    another: 'auto' still picks it, and the whole backbone transfers, reordered to the recording's channels."""
    from spikeinterface_esort.tools.datasets import neuropixels_1_probe

    probe = neuropixels_1_probe(384)
    locations = probe.contact_positions[np.argsort(probe.device_channel_indices)]
    with caplog.at_level("INFO", logger="spikeinterface_esort"):
        backbone = resolve_backbone("auto", locations, 30000.0)
    assert backbone.name == "np1-384ch-30khz"
    assert "chose the shipped backbone np1-384ch-30khz (same contact positions as the recording; same sampling rate)" \
        in caplog.text
    order = layout_order(backbone.channel_locations, locations)
    assert order is not None and sorted(order) == list(range(384)) and not np.array_equal(order, np.arange(384))
    # the same features from the same voltages, whichever order the channels come in
    in_backbone_order, in_recording_order = ESortNetwork(384, 60, 3), ESortNetwork(384, 60, 3)
    transfer_backbone(in_backbone_order, backbone, backbone.channel_locations, 30000.0)
    report = transfer_backbone(in_recording_order, backbone, locations, 30000.0)
    assert report["reordered"] and report["from_scratch"] == ["head"] and not report["adapted"]
    traces = torch.randn(2, 384, 120, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = in_backbone_order.eval().backbone(traces)
        found = in_recording_order.eval().backbone(traces[:, torch.as_tensor(order)])
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    # another probe's positions never match, whatever their order
    grid = load_backbone(pretrained_folder() / "grid-32ch-30khz.pt").channel_locations
    assert layout_order(backbone.channel_locations, locations[::-1]) is not None
    assert layout_order(grid, grid[np.random.default_rng(0).permutation(32)]) is not None
    assert layout_order(grid, grid * 1.5) is None and layout_order(grid, locations[:32]) is None


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
    assert "pretrained_weights='auto' chose the shipped backbone grid-32ch-30khz (no shipped backbone has this " \
           "probe's 8 contact positions: only its temporal filters transfer; same sampling rate)" in log
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
    thresholds = sorting.get_property("esort_threshold")
    assert ((thresholds > 0) & (thresholds < 1)).all() and not np.allclose(thresholds, 0.5)  # chosen per unit
    log = (tmp_path / "out" / "sorter_output" / "esort.log").read_text()
    assert "(first 5 per unit)" in log and "few-shot thresholds of" in log
    assert "frozen layers" not in log  # from scratch: 'auto' freezes nothing


def test_pretrain_command_writes_a_backbone_the_sorter_can_load(tmp_path):
    from spikeinterface_esort.tools.pretrain import main

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

    from spikeinterface_esort.tools.fewshot import annotation_reduction, summary_table

    rows = [dict(k=str(k), init=init, seed=s, accuracy=acc)
            for k, (scratch, pretrained) in {5: (0.5, 0.7), 10: (0.6, 0.8), 20: (0.9, 0.95)}.items()
            for init, acc in (("scratch", scratch), ("pretrained", pretrained)) for s in (0, 1)]
    _, stats = summary_table(pd.DataFrame(rows), [5, 10, 20])
    lines = annotation_reduction(stats, [5, 10, 20])
    assert "at least 50% fewer" in lines[0]  # pretrained at 5 (0.7) beats scratch at 10 (0.6)
    assert "k~16.7" in lines[1]  # 0.9 reached between 10 (0.8) and 20 (0.95)


def test_pretraining_writes_a_backbone_that_loads_and_transfers(tmp_path):
    """tools.pretrain at a tiny size: one backbone shared by two recordings' heads, trained with the sorter's own
    training loop; its card and weights load as pretrained weights."""
    from spikeinterface_esort.tools.pretrain import main

    assert main(["--layout", "grid", "--channels", "16", "--seeds", "1", "2", "--units", "3", "--duration", "8",
                 "--epochs", "2", "--name", "tiny", "--out", str(tmp_path / "out"),
                 "--work-folder", str(tmp_path / "work")]) in (0, None)
    card = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert 1 <= card["recipe"]["epochs_run"] <= 2 and len(card["history"]) == card["recipe"]["epochs_run"]
    assert [row["seed"] for row in card["validation"]["recordings"]] == [1, 2]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in card["validation"]["recordings"])
    backbone = load_backbone(tmp_path / "out" / "tiny.pt")
    assert backbone.channel_locations.shape == (16, 2)
    network = ESortNetwork(16, backbone.window_samples, 5)
    report = transfer_backbone(network, backbone, backbone.channel_locations, card["sampling_frequency"])
    assert report["from_scratch"] == ["head"] and "spatial" in report["transferred"]
