"""Transfer learning: the shipped backbones, what transfers to which probe, and bad pretrained weights."""

import json

import numpy as np
import pytest
import spikeinterface.full as si
import torch

import spikeinterface_esort
from spikeinterface_esort.model import ESortModel
from spikeinterface_esort.network import ESortNetwork
from spikeinterface_esort.parameters import default_params
from spikeinterface_esort.transfer import (
    layout_order, load_backbone, pretrained_folder, resolve_backbone, resolve_epochs, transfer_backbone,
)


@pytest.mark.parametrize("name", ["grid-32ch-30khz", "np1-384ch-30khz"])
def test_shipped_backbones_are_small_and_carry_their_card(name):
    folder = pretrained_folder()
    assert name in spikeinterface_esort.available_backbones()
    assert (folder / f"{name}.pt").stat().st_size < 10e6
    card = json.loads((folder / f"{name}.json").read_text())
    assert card["command"].startswith("python -m spikeinterface_esort.tools.pretrain")
    assert len(card["channel_locations"]) == card["num_channels"]
    assert len(card["training_data"]["seeds"]) >= 20  # a corpus: noise, firing rates, density, drift, templates
    assert card["network"]["spatial_radius_um"] == default_params()["spatial_radius_um"]  # transfers whole by default
    # tried on recordings that are not in its corpus: on average at least as accurate as training from scratch
    tests = card["tests"]
    assert len(tests) >= 2 and not {t["seed"] for t in tests} & set(card["training_data"]["seeds"])
    assert np.mean([t["pretrained_accuracy"] for t in tests]) >= np.mean([t["scratch_accuracy"] for t in tests])
    assert (folder / f"{name}.md").read_text().count(card["command"]) == 1
    state = torch.load(folder / f"{name}.pt", weights_only=True)
    assert not any(k.startswith("head.") for k in state)


def test_same_layout_transfers_the_whole_backbone(ground_truth_recording):
    recording = ground_truth_recording[0]
    locations, fs = recording.get_channel_locations(), recording.get_sampling_frequency()
    backbone = resolve_backbone("auto", locations, fs)
    assert backbone.name == "grid-32ch-30khz"
    network = ESortNetwork(32, 60, 5, spatial_radius_um=backbone.spatial_radius_um)
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
    radius = backbone.spatial_radius_um
    in_backbone_order, in_recording_order = (ESortNetwork(384, 60, 3, spatial_radius_um=radius) for _ in range(2))
    transfer_backbone(in_backbone_order, backbone, backbone.channel_locations, 30000.0)
    report = transfer_backbone(in_recording_order, backbone, locations, 30000.0)
    in_backbone_order.set_channel_locations(backbone.channel_locations)  # as training does (a no-op when dense)
    in_recording_order.set_channel_locations(locations)
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
    assert "frozen layers" not in log  # only the temporal filters transferred: 'auto' freezes nothing


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


def test_annotation_curve_reads_the_window_a_pretrained_start_needs(tmp_path):
    import pandas as pd

    from spikeinterface_esort.tools.annotation_curve import annotation_reduction, main, summary

    curve = pd.Series([0.80, 0.90, 0.94, 0.95], index=[5.0, 10.0, 20.0, 40.0])
    assert annotation_reduction(curve, 0.945)[0] == pytest.approx(30.0)  # between 20 s (0.94) and 40 s (0.95)
    assert annotation_reduction(curve, 0.70) == (5.0, "at most 5 s")
    assert annotation_reduction(curve, 0.99) == (None, "not reached")
    accuracy = {"scratch": [0.70, 0.80, 0.90, 0.95], "fine-tuned": [0.85, 0.95, 0.96, 0.96],
                "frozen": [0.60, 0.65, 0.70, 0.75]}
    rows = [dict(layout="grid32", labels="ground truth", window_s=w, arm=arm, seed=0, accuracy=a, training_s=w / 2)
            for arm, values in accuracy.items() for w, a in zip([5.0, 10.0, 20.0, 40.0], values)]
    text = summary(pd.DataFrame(rows))
    assert "| 5 | 0.700 | 0.850 | 0.600 | 2.5 | 2.5 | 2.5 |" in text
    assert "- fine-tuned: reaches 0.945 at 9.8 s: annotation reduction 76%" in text  # 0.85 at 5 s, 0.95 at 10 s: 9.75 s
    assert "training time at 10 s / scratch's at 40 s: 0.25" in text
    assert "- frozen: never reaches scratch at 40 s" in text
    assert "- scratch itself reaches 0.945 at 38.0 s (5% shorter than 40 s)" in text  # 0.90 at 20 s, 0.95 at 40 s
    pd.DataFrame(rows).to_csv(tmp_path / "earlier.csv", index=False)  # tables and plot again from a saved run
    main(["--from-csv", str(tmp_path / "earlier.csv"), "--out", str(tmp_path / "out")])
    assert text in (tmp_path / "out" / "annotation_curve.md").read_text()
    assert (tmp_path / "out" / "annotation_curve.png").stat().st_size > 0
    # --set passes esort parameters to every arm (how the curve's earlier figures are reproduced), checked by name
    with pytest.raises(SystemExit):
        main(["--set", "head_init=random,epoch=6", "--out", str(tmp_path / "bad")])


def test_pretraining_on_a_corpus_writes_a_backbone_that_a_default_run_transfers_whole(tmp_path):
    """tools.pretrain at a tiny size: a corpus of two recordings that differ in noise, units, firing rates and drift,
    one backbone shared by their heads, trained with the sorter's own training loop, then tried on a recording not
    in the corpus; the backbone has esort's default network, so a default run transfers every layer of it."""
    from spikeinterface_esort.tools.datasets import corpus_spec
    from spikeinterface_esort.tools.pretrain import main

    with pytest.raises(SystemExit):  # argparse's error: a radius must be a positive number, 'none' or 'default'
        main(["--layout", "grid", "--channels", "16", "--corpus", "2", "--spatial-radius-um", "wide"])
    assert main(["--layout", "grid", "--channels", "16", "--corpus", "2", "--seeds", "1", "--duration", "8",
                 "--epochs", "2", "--test-recordings", "1", "--test-duration", "10", "--name", "tiny",
                 "--out", str(tmp_path / "out"), "--work-folder", str(tmp_path / "work")]) in (0, None)
    card = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert 1 <= card["recipe"]["epochs_run"] <= 2 and len(card["history"]) == card["recipe"]["epochs_run"]
    specs = card["training_data"]["recordings"]
    assert [row["seed"] for row in card["validation"]["recordings"]] == [s["seed"] for s in specs] == [1, 2]
    assert specs[0] == dict(corpus_spec(1, 16, 8.0), layout="grid") and specs[0] != dict(corpus_spec(2, 16, 8.0), layout="grid")
    assert all(3.0 <= s["noise_level_uv"] <= 15.0 and 0.0 <= s["drift_um"] <= 20.0 for s in specs)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in card["validation"]["recordings"])
    (test,) = card["tests"]
    assert test["seed"] == 3 and 0.0 <= test["pretrained_accuracy"] <= 1.0 and 0.0 <= test["scratch_accuracy"] <= 1.0
    assert "## On recordings not in the corpus" in (tmp_path / "out" / "tiny.md").read_text()
    backbone = load_backbone(tmp_path / "out" / "tiny.pt")
    assert backbone.channel_locations.shape == (16, 2)
    assert backbone.spatial_radius_um == default_params()["spatial_radius_um"]
    network = ESortNetwork(16, backbone.window_samples, 5, spatial_radius_um=backbone.spatial_radius_um)
    report = transfer_backbone(network, backbone, backbone.channel_locations, card["sampling_frequency"])
    assert report["from_scratch"] == ["head"] and "spatial" in report["transferred"]


def test_a_spatial_filter_transfers_only_to_a_network_of_the_same_kind():
    """A dense filter masked to a local one would keep a fraction of what it learnt: it is trained from scratch, and
    the per-channel layers still transfer; a local filter of the same radius transfers whole."""
    from spikeinterface_esort.tools.datasets import make_probe
    from spikeinterface_esort.transfer import Backbone, model_backbone

    locations = make_probe("grid", 32).contact_positions
    backbones = {}
    for radius in (None, 40.0):
        torch.manual_seed(0)
        network = ESortNetwork(32, 60, 3, spatial_radius_um=radius)
        network.set_channel_locations(locations)
        state = {k: v for k, v in network.state_dict().items() if not k.startswith("head.")}
        backbones[radius] = Backbone(f"r{radius}", state, 60, 30000.0, locations, (8, 16), 256, {}, radius)
    for backbone_radius, network_radius, whole in ((None, 40.0, False), (40.0, None, False), (40.0, 40.0, True),
                                                   (40.0, 60.0, False)):
        network = ESortNetwork(32, 60, 3, spatial_radius_um=network_radius)
        report = transfer_backbone(network, backbones[backbone_radius], locations, 30000.0)
        assert {"temporal1_norm", "temporal2_norm"} <= set(report["transferred"])
        assert ("spatial" in report["transferred"]) == whole
        assert report["from_scratch"] == (["head"] if whole else ["spatial", "spatial_norm", "head"])
    network = ESortNetwork(32, 60, 3, spatial_radius_um=40.0)
    transfer_backbone(network, backbones[40.0], locations, 30000.0)
    network.set_channel_locations(locations)
    torch.testing.assert_close(network.spatial.weight, backbones[40.0].state["spatial.weight"])
    model = ESortModel(network, 30000.0, np.arange(32), locations, np.ones(32), np.arange(3), 5)
    assert model_backbone(model).spatial_radius_um == 40.0  # a saved model is a backbone of its own kind


def test_a_head_imprinted_on_the_shipped_backbone_sorts_after_one_epoch(ground_truth_recording, tmp_path):
    """From a whole shipped backbone the head starts from the backbone's features of each unit's annotated windows:
    after one short epoch (two batches) it already sorts the held-out half, where a random head has barely started."""
    from spikeinterface_esort.tools.datasets import held_out_performance

    recording, ground_truth, gt_folder = ground_truth_recording
    half = recording.get_num_samples() // 2
    accuracy = {}
    for head_init in ("auto", "random"):
        folder = tmp_path / head_init
        sorting = si.run_sorter("esort", recording, folder=folder, annotation_sorting_path=str(gt_folder),
                                train_duration_s=20.0, pretrained_weights="grid-32ch-30khz", epochs=1, spikes_per_epoch=512,
                                head_init=head_init)
        accuracy[head_init] = held_out_performance(sorting, ground_truth, half)["accuracy"].mean()
        log = (folder / "sorter_output" / "esort.log").read_text()
        assert ("training: head imprinted from the backbone's features of 10 of 10 units" in log) == (head_init == "auto")
    assert accuracy["auto"] >= 0.65 and accuracy["auto"] >= accuracy["random"] + 0.2, accuracy  # measured 0.750, 0.367


def test_epochs_auto_halves_the_budget_only_for_a_head_imprinted_on_the_whole_window():
    from spikeinterface_esort import PUBLISHED_PARAMS
    from spikeinterface_esort.parameters import validate_params

    assert default_params()["epochs"] == "auto" and default_params()["pretrained_weights"] == "auto"
    assert resolve_epochs("auto", imprinted=True, few_shot=False) == 3
    assert resolve_epochs("auto", imprinted=False, few_shot=False) == 6
    assert resolve_epochs("auto", imprinted=True, few_shot=True) == 6  # few shots: the budget they were measured with
    assert resolve_epochs(10, imprinted=True, few_shot=False) == 10  # a number is kept as given
    assert PUBLISHED_PARAMS["pretrained_weights"] is None  # the published path trains from scratch
    with pytest.raises(ValueError, match="'epochs' must be one of 'auto'"):
        validate_params(dict(epochs="all"))
    with pytest.raises(ValueError, match="'epochs' must be in"):
        validate_params(dict(epochs=0))


def test_head_init_auto_imprints_only_on_a_whole_backbone(small_recording, tmp_path):
    """On another probe only the temporal filters transfer: the spatial stage is new, so its features say nothing of
    the units yet, and 'auto' leaves the head random; a bad head_init is refused before any work."""
    recording, _, gt_folder = small_recording
    si.run_sorter("esort", recording, folder=tmp_path / "other", annotation_sorting_path=str(gt_folder),
                  train_duration_s=8.0, epochs=1, pretrained_weights="auto")
    log = (tmp_path / "other" / "sorter_output" / "esort.log").read_text()
    assert "transferred ['temporal1', 'temporal2']" in log and "head imprinted" not in log
    with pytest.raises(ValueError, match="head_init"):
        si.run_sorter("esort", recording, folder=tmp_path / "bad", annotation_sorting_path=str(gt_folder),
                      head_init="mean")
