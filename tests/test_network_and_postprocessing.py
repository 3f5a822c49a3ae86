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
    local_maxima, neighbour_pairs, resolve_conflicts, smooth, smoothing_taps, triangular_kernel,
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


def test_neighbour_pairs_are_every_pair_within_the_window():
    rng = np.random.default_rng(0)
    samples = np.sort(rng.integers(0, 400, size=120))
    first, second = neighbour_pairs(torch.from_numpy(samples), 7)
    expected = {(i, j) for i in range(len(samples)) for j in range(i + 1, len(samples)) if samples[j] - samples[i] <= 7}
    assert set(zip(first.tolist(), second.tolist())) == expected
    assert len(first) == len(expected)  # no pair twice
    empty = neighbour_pairs(torch.zeros(0, dtype=torch.long), 7)
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_conflicts_keep_the_most_probable_of_linked_neighbours():
    # unit 0 and 1 are linked, unit 2 is linked to nobody
    linked = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    samples = torch.tensor([100, 103, 101, 300, 330, 500, 502, 700, 700])
    units = torch.tensor([0, 1, 2, 0, 1, 0, 0, 0, 1])
    values = torch.tensor([0.9, 0.6, 0.2, 0.5, 0.9, 0.4, 0.8, 0.7, 0.7])
    keep = resolve_conflicts(samples, units, values, linked, window=5)
    # 103 (unit 1) loses to 100 (unit 0, more probable); 101 is unit 2, not linked: kept;
    # 300 and 330 are too far apart; 500 and 502 are the same unit: not neighbours;
    # a tie at 700 keeps the first given
    assert keep.tolist() == [True, False, True, True, True, True, True, True, False]
    # the result does not depend on the order the detections are given in
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(1))
    tied_last = values.clone()
    tied_last[8] = 0.69  # no tie, so any order gives the same answer
    reference = resolve_conflicts(samples, units, tied_last, linked, 5)
    assert torch.equal(resolve_conflicts(samples[order], units[order], tied_last[order], linked, 5), reference[order])
    # one parallel round: a detection removed by a more probable neighbour still removes its own weaker one
    chain = resolve_conflicts(torch.tensor([0, 4, 8]), torch.tensor([0, 1, 0]), torch.tensor([0.5, 0.7, 0.9]), linked, 5)
    assert chain.tolist() == [False, False, True]


def test_conflict_gains_count_false_detections_removed_against_true_ones_lost():
    from spikeinterface_esort.studies import conflict_gains

    samples = np.array([100, 102, 300, 303, 500, 501, 900, 960])
    units = np.array([0, 1, 0, 1, 0, 2, 1, 2])
    values = np.array([0.9, 0.5, 0.4, 0.8, 0.9, 0.6, 0.9, 0.9])
    matched = np.array([True, False, True, True, True, True, True, False])
    gains = conflict_gains(samples, units, values, matched, num_units=3, window=5)
    # (0, 1): at 100 the less probable (unit 1) is a false detection (+1), at 300 a true one (unit 0, -1)
    # (0, 2): at 500 the less probable (unit 2) is true (-1); 900 and 960 are too far apart
    assert gains.tolist() == [[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
    matched[3] = False  # only the less probable of a pair counts: the winner at 303 being false changes nothing
    assert conflict_gains(samples, units, values, matched, 3, 5)[0, 1] == 0.0
    matched[2] = False  # the loser at 300 false too: two false detections removed
    assert conflict_gains(samples, units, values, matched, 3, 5)[0, 1] == 2.0


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
    units_d, _, samples_d, values_d = model.detect(torch.from_numpy(padded))
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
