"""The network in convolutional form equals the published window-by-window network, and chunked
inference + post-processing find exactly the spikes of a dense evaluation of the whole recording."""

import numpy as np
import pytest
import torch
from spikeinterface.core import NumpyRecording

from spikeinterface_esort.inference import detect_in_recording
from spikeinterface_esort.model import ESortModel
from spikeinterface_esort.network import ESortNetwork
from spikeinterface_esort.postprocessing import (
    local_maxima, smooth, smoothing_taps, triangular_kernel,
)


def random_network(channels=6, window=20, units=3, seed=0):
    torch.manual_seed(seed)
    net = ESortNetwork(channels, window, units)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (net.temporal1_norm, net.temporal2_norm, net.spatial_norm):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def published_window_network(net, window_traces):
    """The paper's network on one window (channels, T), written with Linear layers on (C, T)."""
    x = window_traces @ net.temporal1.weight[:, 0, :].T + net.temporal1.bias  # (C, 8)
    bn = net.temporal1_norm
    x = torch.relu((x - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] + bn.bias[:, None])
    x = x @ net.temporal2.weight[:, :, 0].T + net.temporal2.bias  # (C, 16)
    bn = net.temporal2_norm
    x = torch.relu((x - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] + bn.bias[:, None])
    x = net.spatial.weight[:, :, 0] @ x.reshape(-1) + net.spatial.bias  # flatten C*16 -> 256
    bn = net.spatial_norm
    x = torch.relu((x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    return net.head.weight[:, :, 0] @ x + net.head.bias


def test_convolutional_form_equals_window_by_window():
    net = random_network()
    traces = torch.randn(1, 6, 50)
    with torch.no_grad():
        dense = net(traces)[0]  # (units, 50 - 20 + 1)
        for i in range(dense.shape[1]):
            expected = published_window_network(net, traces[0, :, i : i + 20])
            torch.testing.assert_close(dense[:, i], expected, rtol=1e-4, atol=1e-4)


def test_network_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expects 6 channels, got 5"):
        random_network()(torch.randn(1, 5, 40))


def test_triangular_kernel_matches_the_paper():
    assert smoothing_taps(0.53, 32000.0) == 17
    kernel = triangular_kernel(17).numpy()
    np.testing.assert_allclose(kernel * 81, np.r_[np.arange(1, 10), np.arange(8, 0, -1)])


@pytest.mark.parametrize("taps", [1, 5, 17])
def test_smoothing_is_the_triangular_convolution(taps):
    probabilities = torch.rand(6, 300)
    kernel = triangular_kernel(taps)
    expected = torch.nn.functional.conv1d(probabilities.unsqueeze(1), kernel.reshape(1, 1, -1)).squeeze(1)
    torch.testing.assert_close(smooth(probabilities, kernel), expected, atol=1e-7, rtol=1e-6)


def test_local_maxima_threshold_and_plateau():
    smoothed = torch.tensor([[0.0, 0.2, 0.9, 0.9, 0.1, 0.6, 0.3, 0.0], [0.0, 0.4, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]])
    units, samples, values = local_maxima(smoothed, torch.tensor([0.5, 0.5]))
    assert units.tolist() == [0, 0] and samples.tolist() == [2, 5]
    torch.testing.assert_close(values, torch.tensor([0.9, 0.6]))


def test_chunked_inference_equals_dense_evaluation():
    fs, channels, units = 10000.0, 6, 3
    rng = np.random.default_rng(0)
    traces = rng.normal(size=(12345, channels)).astype("float32")
    recording = NumpyRecording([traces], fs)
    net = random_network(channels, 20, units)
    with torch.no_grad():
        net.head.bias.fill_(2.0)  # probabilities spread over (0, 1): many local maxima
    model = ESortModel(net, fs, recording.channel_ids, np.zeros((channels, 2)), np.ones(channels), np.arange(units),
                       smoothing_taps=5, thresholds=np.full(units, 0.3))
    chunked = detect_in_recording(model, recording, chunk_size=977, progress_bar=False)

    # dense: the whole segment in one block, zero-padded by the model's margins
    before, after = model.margin_before(), model.margin_after()
    padded = np.zeros((len(traces) + before + after, channels), dtype="float32")
    padded[before : before + len(traces)] = traces
    units_d, _, samples_d, values_d = model.spikes(model.probabilities(torch.from_numpy(padded)))
    order = np.lexsort((units_d.numpy(), samples_d.numpy()))
    assert len(chunked.sample_index) > 100
    np.testing.assert_array_equal(chunked.sample_index, samples_d.numpy()[order] - before)
    np.testing.assert_array_equal(chunked.unit_index, units_d.numpy()[order])
    np.testing.assert_allclose(chunked.probability, values_d.numpy()[order], rtol=1e-5, atol=1e-6)


def test_model_save_and_load_round_trip(tmp_path):
    net = random_network()
    model = ESortModel(net, 30000.0, np.array(["a", "b", "c", "d", "e", "f"]), np.arange(12.0).reshape(6, 2),
                       np.full(6, 2.0), np.array([7, 8, 9]), smoothing_taps=15, thresholds=np.array([0.2, 0.5, 0.7]))
    model.save(tmp_path / "model")
    loaded = ESortModel.load(tmp_path / "model")
    traces = torch.randn(200, 6)
    torch.testing.assert_close(loaded.probabilities(traces), model.probabilities(traces))
    assert loaded.unit_ids.tolist() == [7, 8, 9] and loaded.channel_ids.tolist() == list("abcdef")
    np.testing.assert_allclose(loaded.thresholds, [0.2, 0.5, 0.7])


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_inference_does_not_depend_on_chunking(stride):
    fs, channels, units = 10000.0, 6, 3
    rng = np.random.default_rng(1)
    recording = NumpyRecording([rng.normal(size=(12345, channels)).astype("float32")], fs)
    net = random_network(channels, 20, units)
    with torch.no_grad():
        net.head.bias.fill_(2.0)
    model = ESortModel(net, fs, recording.channel_ids, np.zeros((channels, 2)), np.ones(channels), np.arange(units),
                       smoothing_taps=9, thresholds=np.full(units, 0.3))
    small = detect_in_recording(model, recording, chunk_size=977, progress_bar=False, stride=stride)
    whole = detect_in_recording(model, recording, chunk_size=12345, progress_bar=False, stride=stride)
    exact = detect_in_recording(model, recording, chunk_size=12345, progress_bar=False)
    assert len(small.sample_index) > 50
    np.testing.assert_array_equal(small.unit_index, whole.unit_index)
    # the same grid points; a refined time may round the other way (float differences between block sizes)
    assert np.abs(small.sample_index - whole.sample_index).max() <= 1
    np.testing.assert_allclose(small.probability, whole.probability, rtol=1e-5, atol=1e-6)
    # grid points are every stride-th sample; refined times lie within a stride of them
    assert len(whole.sample_index) < len(exact.sample_index) * 1.2
