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
