"""The fast paths agree with the exact one: batch norms folded into the weights (always on), bfloat16 inference
(``inference_dtype``), chunks sorted in parallel, and mixed-precision training (``training_dtype``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeinterface_esort import ESortModel
from spikeinterface_esort.tools.datasets import held_out_performance
from spikeinterface_esort.device import resolve_dtype
from spikeinterface_esort.network import ESortNetwork, FoldedNetwork

from conftest import NATIVE_BFLOAT16, needs_native_bfloat16


def trained_like_network(channels: int, units: int = 5) -> ESortNetwork:
    """A network whose batch norms have non-trivial statistics and affine weights (some negative)."""
    torch.manual_seed(1)
    network = ESortNetwork(channels, 30, units)
    for norm in (network.temporal1_norm, network.temporal2_norm, network.spatial_norm):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.3, 3)
        norm.weight.data.uniform_(-1.5, 1.5)
        norm.bias.data.uniform_(-1, 1)
    return network.eval()


@pytest.mark.parametrize("stride", [1, 2, 3, 16])  # frames of 32, 30, 20 and 8 windows (CPU)
def test_folded_network_equals_the_network_across_blocks(stride):
    network = trained_like_network(8)
    folded = FoldedNetwork(network)
    traces = torch.randn(8, 3 * folded.block_windows(torch.device("cpu")) * stride + 101)  # several blocks
    with torch.no_grad():
        expected = network(traces.unsqueeze(0), stride)[0]
    got = folded(traces, stride)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    low = FoldedNetwork(network, "bfloat16")(traces, stride)
    assert low.dtype == torch.float32 and (low - expected).abs().max() < 0.1


def test_model_refolds_when_its_weights_change(small_esort_run):
    folder, _ = small_esort_run
    model = ESortModel.load(folder)
    traces = torch.randn(3000, model.network.num_channels)
    before = model.probabilities(traces)
    with torch.no_grad():
        model.network.head.bias += 1.0  # e.g. a fine-tune step
    after = model.probabilities(traces)
    assert (after > before).all()
    model.params["inference_dtype"] = "float16"
    with pytest.raises(ValueError, match="float16"):
        model.probabilities(traces)  # CPU


def test_auto_precision_is_bfloat16_only_where_native(monkeypatch):
    from spikeinterface_esort import device as device_module

    cpu = torch.device("cpu")
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(device_module, "native_bfloat16", lambda device, native=native: native)
        assert resolve_dtype("inference_dtype", "auto", cpu) == expected
        assert resolve_dtype("training_dtype", "auto", cpu) == expected
        assert resolve_dtype("inference_dtype", "float32", cpu) == "float32"
    # emulated bfloat16 is refused, naming the parameter and the way out
    with pytest.raises(ValueError, match=r"'training_dtype'='bfloat16'.*no native bfloat16.*'auto'"):
        resolve_dtype("training_dtype", "bfloat16", cpu)
    with pytest.raises(ValueError, match="'inference_dtype'='float16' needs a CUDA device"):
        resolve_dtype("inference_dtype", "float16", cpu)


def test_run_sorter_resolves_auto_precision_and_records_it(small_recording, tmp_path):
    """'auto' precisions run as the CPU allows, and the model records what ran; bfloat16 where it would be
    emulated is refused before any work."""
    import json

    import spikeinterface.sorters as ss

    recording, _, gt_folder = small_recording
    expected = "bfloat16" if NATIVE_BFLOAT16 else "float32"
    folder = tmp_path / "auto"
    ss.run_sorter("esort", recording, folder=folder, annotation_sorting_path=str(gt_folder), train_duration_s=8.0,
                  epochs=2, training_dtype="auto", inference_dtype="auto")
    card = json.loads((folder / "sorter_output" / "model" / "model.json").read_text())
    assert card["params"]["inference_dtype"] == card["params"]["training_dtype"] == expected
    assert f"inference_dtype: auto -> {expected}" in (folder / "sorter_output" / "esort.log").read_text()
    if not NATIVE_BFLOAT16:
        with pytest.raises(Exception, match="no native bfloat16"):
            ss.run_sorter("esort", recording, folder=tmp_path / "refused", annotation_sorting_path=str(gt_folder),
                          train_duration_s=8.0, inference_dtype="bfloat16")
        assert not (tmp_path / "refused" / "sorter_output" / "model").exists()


@needs_native_bfloat16
def test_bfloat16_sorts_like_float32(small_recording, small_esort_run):
    recording, truth, _ = small_recording
    folder, _ = small_esort_run
    model = ESortModel.load(folder)
    trained_with = model.inference_dtype  # 'auto' resolved: bfloat16 on this CPU
    exact = model.sort(recording, inference_dtype="float32")
    fast = model.sort(recording, inference_dtype="bfloat16")
    assert model.inference_dtype == trained_with  # the model itself is unchanged
    start = 8 * 30000
    exact_accuracy = held_out_performance(exact, truth, start)["accuracy"]
    fast_accuracy = held_out_performance(fast, truth, start)["accuracy"]
    assert abs(fast_accuracy.mean() - exact_accuracy.mean()) <= 0.01
    # nearly every spike the same, at the same sample
    for unit_id in exact.unit_ids:
        a, b = exact.get_unit_spike_train(unit_id), fast.get_unit_spike_train(unit_id)
        assert len(np.intersect1d(a, b)) >= 0.95 * max(len(a), len(b))


def test_parallel_chunks_change_no_spike(small_recording, small_esort_run):
    """On a CPU with 2 threads, chunks are sorted by 2 workers, each on one core; the spikes are those of chunks
    sorted in turn (read ahead, or read when needed), and the caller's torch threads are restored."""
    from spikeinterface_esort.inference import detect_in_recording
    from spikeinterface_esort.preprocessing import preprocess

    recording, _, _ = small_recording
    folder, _ = small_esort_run
    model = ESortModel.load(folder)
    preprocessed = preprocess(recording, model.preprocessing)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = detect_in_recording(model, preprocessed, 3000, progress_bar=False)
        assert torch.get_num_threads() == 2
        ahead = detect_in_recording(model, preprocessed, 3000, progress_bar=False, parallel_chunks=False)
        in_turn = detect_in_recording(model, preprocessed, 3000, progress_bar=False, prefetch=False)
        # one chunk (as the online sorter asks for): sorted in turn, the network on both threads
        one_chunk = detect_in_recording(model, preprocessed, 3000, progress_bar=False, frame_range=(6000, 9000))
    finally:
        torch.set_num_threads(previous)
    assert parallel.timings["parallel_chunks"] == 2
    assert all("parallel_chunks" not in d.timings for d in (ahead, in_turn, one_chunk))
    assert len(parallel.sample_index) > 100
    for other in (ahead, in_turn):
        for name in ("sample_index", "segment_index", "unit_index", "probability"):
            np.testing.assert_array_equal(getattr(parallel, name), getattr(other, name))
    with pytest.raises(ValueError, match="parallel_chunks"):
        detect_in_recording(model, preprocessed, 3000, progress_bar=False, parallel_chunks=True, filter_on_device=True)


def test_strided_spike_times_stay_inside_the_recording(small_recording, small_esort_run):
    """A time refined between grid points can fall outside the recording at its ends (a real np1 sort at stride 2 had
    a spike at frame -1, which SpikeInterface's frame_slice refuses): every spike is kept inside it."""
    from spikeinterface_esort.inference import detect_in_recording
    from spikeinterface_esort.preprocessing import preprocess

    recording, _, _ = small_recording
    model = ESortModel.load(small_esort_run[0])
    preprocessed = preprocess(recording, model.preprocessing)
    low = np.full(len(model.unit_ids), 1e-4, dtype="float32")  # every local maximum is a spike, the ends' too
    exact = detect_in_recording(model, preprocessed, 3000, progress_bar=False, thresholds=low, stride=16)
    spikes = model.spikes

    def refined_beyond_the_ends(probabilities, thresholds=None, stride=1):  # every time 200 samples too early
        units, grid, refined, values = spikes(probabilities, thresholds, stride)
        return units, grid, refined - 200, values

    model.spikes = refined_beyond_the_ends
    shifted = detect_in_recording(model, preprocessed, 3000, progress_bar=False, thresholds=low, stride=16)
    assert len(shifted.sample_index) == len(exact.sample_index) > 100
    assert exact.sample_index.min() < 200 and (shifted.sample_index == 0).any()  # some fell before the start
    assert shifted.sample_index.min() >= 0 and shifted.sample_index.max() < recording.get_num_samples()


def test_filtering_on_the_device_changes_no_spike(small_recording, small_esort_run):
    """On a GPU the FFT filter runs on the device (``filter_on_device``, default there); forced here on the CPU,
    it finds the spikes of the CPU filter. Other preprocessing cannot be filtered on the device."""
    from spikeinterface_esort.inference import detect_in_recording, filters_on_device
    from spikeinterface_esort.preprocessing import read_block
    from spikeinterface_esort.preprocessing import preprocess

    recording, _, _ = small_recording
    folder, _ = small_esort_run
    model = ESortModel.load(folder)
    model.params = dict(model.params, inference_dtype="float32")  # bfloat16 rounding would move ties: compare filters only
    preprocessed = preprocess(recording, model.preprocessing)
    assert not filters_on_device(preprocessed, torch.device("cpu"))
    assert filters_on_device(preprocessed, torch.device("cuda"))
    on_cpu = detect_in_recording(model, preprocessed, 30000, progress_bar=False)
    on_device = detect_in_recording(model, preprocessed, 30000, progress_bar=False, filter_on_device=True)
    assert len(on_cpu.sample_index) > 100
    np.testing.assert_array_equal(on_device.sample_index, on_cpu.sample_index)
    np.testing.assert_array_equal(on_device.unit_index, on_cpu.unit_index)
    np.testing.assert_allclose(on_device.probability, on_cpu.probability, atol=1e-4)
    # a block past the segment's ends is zero there, as read_block's numpy path gives it
    num = preprocessed.get_num_samples()
    block = read_block(preprocessed, num - 100, num + 50, 0, torch.device("cpu"))
    expected = read_block(preprocessed, num - 100, num + 50, 0)
    assert block.shape == expected.shape and (block[100:] == 0).all()
    np.testing.assert_allclose(block.numpy(), expected, atol=1e-4)
    sosfiltfilt = preprocess(recording, dict(model.preprocessing, filter_method="sosfiltfilt"))
    assert not filters_on_device(sosfiltfilt, torch.device("cuda"))
    with pytest.raises(ValueError, match="filter_on_device"):
        detect_in_recording(model, sosfiltfilt, 30000, progress_bar=False, filter_on_device=True)


@needs_native_bfloat16
def test_bfloat16_training_learns_like_float32(small_recording, small_esort_run, tmp_path):
    """Mixed-precision training (training_dtype="bfloat16") reaches the float32 run's held-out accuracy."""
    import spikeinterface.sorters as ss

    recording, truth, gt_folder = small_recording
    _, exact = small_esort_run
    mixed = ss.run_sorter("esort", recording, folder=tmp_path / "bf16", annotation_sorting_path=str(gt_folder),
                          train_duration_s=8.0, training_dtype="bfloat16")
    start = 8 * 30000
    exact_accuracy = held_out_performance(exact, truth, start)["accuracy"].mean()
    mixed_accuracy = held_out_performance(mixed, truth, start)["accuracy"].mean()
    assert mixed_accuracy >= 0.8
    assert abs(mixed_accuracy - exact_accuracy) <= 0.05


# the local spatial filter (spatial_radius_um) ---------------------------------------------------------------

def test_local_spatial_filter_reads_only_channels_near_its_stretch_of_the_probe():
    from spikeinterface_esort.tools.datasets import make_probe
    from spikeinterface_esort.network import spatial_neighbourhoods

    locations = make_probe("np1", 384).contact_positions  # channels column by column: not in depth order
    mask, order = spatial_neighbourhoods(locations, 256, 100.0)
    depth = locations[:, 1]
    assert np.all(np.diff(depth[order]) >= 0) and sorted(order) == list(range(384))
    assert mask.sum(axis=0).min() >= 16  # every channel is read by at least one group of 16 features
    assert 30 < mask.sum(axis=1).mean() < 60  # about 43 of 384 channels per feature: ~9x fewer weights
    for row in mask:  # each feature reads a contiguous stretch of the probe, at most 2 x 100 um + its run
        read = depth[row > 0]
        assert np.all(np.isin(depth[(depth >= read.min()) & (depth <= read.max())], read))
        assert np.ptp(read) <= 2 * 100.0 + 3840 / 16
    dense, _ = spatial_neighbourhoods(locations, 256, 4000.0)  # a radius spanning the probe: the dense filter
    assert dense.min() == 1.0


@pytest.mark.parametrize("stride", [1, 3])
def test_folded_local_network_equals_the_network(stride):
    """The local filter's grouped products (channels re-ordered along the probe) give the masked network's
    logits, in the convolutional and the training (single-window) forms."""
    from spikeinterface_esort.tools.datasets import make_probe

    torch.manual_seed(2)
    network = ESortNetwork(48, 30, 5, spatial_radius_um=30.0)
    network.set_channel_locations(make_probe("np1", 48).contact_positions)
    assert (network.spatial.weight[:, :, 0] == network.spatial_weight()).all()  # masked weights zeroed
    assert (network.spatial_mask == 0).any() and len(FoldedNetwork(network).spatial_groups) > 1
    for norm in (network.temporal1_norm, network.temporal2_norm, network.spatial_norm):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.3, 3)
        norm.weight.data.uniform_(-1.5, 1.5)
    network.spatial.weight.data.normal_()  # as if trained: the folded network must mask again
    network.eval()
    traces = torch.randn(2000, 48)
    with torch.no_grad():
        expected = network(traces.T.unsqueeze(0), stride)[0]
        windows = traces[:30, None, :]  # (samples, batch, channels)
        torch.testing.assert_close(network.forward_windows(windows)[0], expected[:, 0], rtol=1e-4, atol=1e-4)
    got = FoldedNetwork(network)(traces.T, stride)  # a transposed view, as inference reads it
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_run_sorter_with_a_local_spatial_filter(small_recording, tmp_path):
    """A local spatial filter trains (masked weights stay zero), sorts, is saved with its mask and sorts the same
    after loading."""
    import spikeinterface.sorters as ss

    recording, truth, gt_folder = small_recording
    folder = tmp_path / "local"
    sorting = ss.run_sorter("esort", recording, folder=folder, annotation_sorting_path=str(gt_folder),
                            train_duration_s=8.0, spatial_radius_um=10.0)  # 4 columns of 2 channels, 60 um wide: each group reads a column
    import json

    card = json.loads((folder / "sorter_output" / "model" / "model.json").read_text())
    assert card["format_version"] == 2 and card["network"]["spatial_radius_um"] == 10.0  # readers of format 1 refuse it
    model = ESortModel.load(folder)
    assert model.network.spatial_radius_um == 10.0
    assert model.network.spatial_mask.sum(dim=1).max() == 2
    assert (model.network.spatial.weight[:, :, 0][model.network.spatial_weight() == 0] == 0).all()
    assert "local spatial filter, each feature reads 2 of 8 channels" in (folder / "sorter_output" / "esort.log").read_text()
    accuracy = held_out_performance(sorting, truth, 8 * 30000)["accuracy"]
    assert accuracy.mean() >= 0.8
    again = model.sort(recording)
    for unit_id in sorting.unit_ids:
        np.testing.assert_array_equal(again.get_unit_spike_train(unit_id), sorting.get_unit_spike_train(unit_id))
