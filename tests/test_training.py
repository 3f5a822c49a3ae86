"""Training windows follow the published recipe, and drift augmentation moves signals along the probe."""

import numpy as np
import pytest
import torch
from probeinterface import generate_multi_columns_probe

from spikeinterface_esort.training import DriftAugmentation, WindowSampler, gather_windows


def test_positive_windows_are_labelled_with_every_unit_firing_within_the_jitter():
    spikes = np.array([100, 103, 400])
    units = np.array([0, 1, 0])
    sampler = WindowSampler(spikes, units, num_units=2, lo=0, hi=1000, window_samples=60, jitter=5)
    labels = sampler.labels(np.array([100, 98, 106, 109, 395, 394, 700]))
    np.testing.assert_array_equal(labels, [[1, 1], [1, 1], [0, 1], [0, 0], [1, 0], [0, 0], [0, 0]])


def test_negatives_are_far_from_spikes_and_balanced():
    rng = np.random.default_rng(0)
    spikes = np.sort(rng.choice(np.arange(100, 99000), size=300, replace=False))
    sampler = WindowSampler(spikes, rng.integers(0, 3, size=300), 3, lo=0, hi=100000, window_samples=60, jitter=5)
    centres, targets = sampler.draw(rng, windows_per_spike=1, negative_ratio=1.0)
    positive = targets.sum(axis=1) > 0
    assert positive.sum() == 300 and (~positive).sum() == 300
    distance = np.abs(centres[~positive][:, None] - spikes[None, :]).min(axis=1)
    assert distance.min() > 5
    assert np.abs(centres[positive][:, None] - spikes[None, :]).min(axis=1).max() <= 5
    assert centres.min() >= 30 and centres.max() < 100000 - 29


def test_windows_are_centred_on_their_sample():
    traces = torch.arange(200, dtype=torch.float16)[:, None].repeat(1, 3)  # value = sample index
    windows = gather_windows(traces, torch.tensor([50, 120]), window_samples=10)
    assert windows.shape == (10, 2, 3) and windows.dtype == torch.float32  # (samples, batch, channels)
    assert windows[5, 0, 0].item() == 50 and windows[0, 1, 2].item() == 115


def test_drift_augmentation_shifts_signals_along_the_probe():
    probe = generate_multi_columns_probe(num_columns=1, num_contact_per_column=10, ypitch=20)
    augmentation = DriftAugmentation(probe.contact_positions, max_shift_um=20.0, device=torch.device("cpu"))
    windows = torch.zeros(1, 10, 4)
    windows[0, 5] = 1.0  # a signal on the channel at y = 100 um
    by_shift = dict(zip(augmentation.shifts_um.tolist(), augmentation.kernels))
    unshifted = torch.einsum("bst,sc->bct", windows, by_shift[0.0])
    torch.testing.assert_close(unshifted, windows, atol=1e-4, rtol=0)
    moved = torch.einsum("bst,sc->bct", windows, by_shift[20.0])
    assert moved[0, :, 0].argmax().item() == 4  # one pitch along the probe
    assert moved[0, 4, 0].item() > 0.9


def test_drift_augmentation_is_bounded_by_the_probe_depth():
    from spikeinterface_esort.training import drift_augmentation_range

    tall = generate_multi_columns_probe(num_columns=4, num_contact_per_column=16, ypitch=20).contact_positions
    short = generate_multi_columns_probe(num_columns=4, num_contact_per_column=2, ypitch=20).contact_positions
    assert drift_augmentation_range(20.0, tall) == 20.0
    assert drift_augmentation_range(20.0, short) == 5.0
    assert drift_augmentation_range(0.0, tall) == 0.0


def test_training_forward_equals_the_convolutional_network_with_and_without_drift_mixing():
    """forward_windows (matrix products, mixing after the first temporal filter) gives the logits of the
    convolutional forward on the re-sampled windows, in training mode (batch statistics) and in eval mode."""
    from spikeinterface_esort.network import ESortNetwork

    probe = generate_multi_columns_probe(num_columns=2, num_contact_per_column=8, ypitch=20)
    augmentation = DriftAugmentation(probe.contact_positions, max_shift_um=20.0, device=torch.device("cpu"))
    torch.manual_seed(0)
    network = ESortNetwork(16, 12, 3)
    windows = torch.randn(12, 64, 16)  # (samples, batch, channels), as gather_windows reads them
    mixing = augmentation.draw(np.random.default_rng(1))
    for mode in (network.train, network.eval):
        mode()
        torch.testing.assert_close(network.forward_windows(windows), network(windows.permute(1, 2, 0))[:, :, 0],
                                   atol=1e-5, rtol=1e-4)
        shifted = torch.einsum("tbs,sc->bct", windows, mixing)  # re-sampled, (batch, channels, samples)
        torch.testing.assert_close(network.forward_windows(windows, mixing), network(shifted)[:, :, 0],
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="12 samples x 16 channels"):
        network.forward_windows(torch.randn(13, 4, 16))


def test_local_spatial_product_gives_the_masked_products_and_their_gradients():
    """The local filter's grouped training product (channels re-ordered along the probe, one product per group)
    equals the masked dense product, forward and backward (gradcheck in float64), and so do the networks'
    training forms; masked weights get no gradient."""
    from spikeinterface_esort.tools.datasets import make_probe
    from spikeinterface_esort.network import ESortNetwork, LocalSpatialProduct

    locations = make_probe("np1", 32).contact_positions  # channels column by column, not in depth order
    torch.manual_seed(0)
    network = ESortNetwork(32, 12, 3, temporal_features=(4, 3), hidden_size=32, spatial_radius_um=30.0)
    network.set_channel_locations(locations)
    order, hidden, groups = network.local_groups()
    assert len(groups) == 2 and network.spatial_mask.sum(1).max() < 32
    features = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)  # (f2, batch, channels)
    weight = network.spatial_weight().detach().double().requires_grad_()
    bias = torch.randn(32, dtype=torch.float64, requires_grad=True)
    dense = features.permute(1, 2, 0).reshape(5, -1) @ weight.t() + bias  # channel-major flatten
    torch.testing.assert_close(LocalSpatialProduct.apply(features, weight, bias, order, hidden, groups), dense)
    assert torch.autograd.gradcheck(lambda f, w, b: LocalSpatialProduct.apply(f, w, b, order, hidden, groups),
                                    (features, weight, bias), fast_mode=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the products in bfloat16, as F.linear's
        low = LocalSpatialProduct.apply(features.float(), weight.float(), bias.float(), order, hidden, groups)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), dense, atol=0.05 * dense.abs().max().item(), rtol=0.0)

    windows = torch.randn(12, 64, 32)
    mixing = DriftAugmentation(locations, max_shift_um=10.0, device=torch.device("cpu")).draw(np.random.default_rng(0))
    network.train()
    local = network.forward_windows(windows, mixing)
    local.square().sum().backward()
    grad = network.spatial.weight.grad[:, :, 0].clone()
    assert (grad[network.spatial_weight() == 0] == 0).all() and grad.abs().sum() > 0
    network.zero_grad()
    network.spatial_radius_um = None  # the same masked weights through the dense product
    network.spatial.weight.data[:, :, 0] = network.spatial_weight() * network.spatial_mask.repeat_interleave(3, dim=1)
    dense = network.forward_windows(windows, mixing)
    dense.square().sum().backward()
    torch.testing.assert_close(local, dense, atol=1e-5, rtol=1e-4)
    masked = network.spatial.weight.grad[:, :, 0] * network.spatial_mask.repeat_interleave(3, dim=1)
    torch.testing.assert_close(grad, masked, atol=1e-4, rtol=1e-4)
