"""Training windows follow the published recipe, and drift augmentation moves signals along the probe."""

import numpy as np
import pytest
import torch
from probeinterface import generate_multi_columns_probe

from spikeinterface_esort.network import gather_windows
from spikeinterface_esort.training import DriftAugmentation, WindowSampler, validation_spikes


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



@pytest.mark.parametrize("unit_balance, expected_share", [(0.0, 0.01), (0.5, 0.09), (1.0, 0.5)])
def test_unit_balance_shares_positives_between_a_frequent_and_a_rare_unit(unit_balance, expected_share):
    """A unit with 10 annotated spikes next to one with 990: 1 % of the positives with unit_balance=0 (spike
    counts), 10 / (10 + sqrt(10 * 990)) = 9 % with 0.5, half with 1."""
    rng = np.random.default_rng(0)
    spikes = np.sort(rng.choice(np.arange(100, 999_000), size=1000, replace=False))
    units = np.zeros(1000, dtype=np.int64)
    units[rng.choice(1000, size=10, replace=False)] = 1
    sampler = WindowSampler(spikes, units, 2, lo=0, hi=1_000_000, window_samples=60, jitter=5)
    rare = 0
    for _ in range(20):
        centres, targets = sampler.draw(rng, windows_per_spike=1, negative_ratio=1.0, num_spikes=2000,
                                        unit_balance=unit_balance)
        assert (targets.sum(axis=1) > 0).sum() == 2000  # the epoch's size does not depend on the balance
        rare += targets[:, 1].sum()
    assert rare / (20 * 2000) == pytest.approx(expected_share, abs=0.02)

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


def test_drift_augmentation_kernels_are_spikeinterfaces_kriging_shift_by_shift():
    """The kernels of every shift, computed in one call, are those SpikeInterface's kriging gives each shift alone."""
    from spikeinterface.preprocessing.preprocessing_tools import get_spatial_interpolation_kernel

    locations = generate_multi_columns_probe(num_columns=2, num_contact_per_column=12, ypitch=20).contact_positions
    augmentation = DriftAugmentation(locations, max_shift_um=15.0, device=torch.device("cpu"))
    assert len(augmentation.kernels) == 31
    for shift, kernel in zip(augmentation.shifts_um, augmentation.kernels):
        alone = get_spatial_interpolation_kernel(locations, locations + np.array([0.0, shift]), method="kriging",
                                                 sigma_um=20.0, p=2, force_extrapolate=True)
        np.testing.assert_allclose(kernel.numpy(), alone, atol=1e-6)


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
        shifted = torch.einsum("tbs,sc->bct", windows, mixing.matrix)  # re-sampled, (batch, channels, samples)
        torch.testing.assert_close(network.forward_windows(windows, mixing), network(shifted)[:, :, 0],
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="12 samples x 16 channels"):
        network.forward_windows(torch.randn(13, 4, 16))


def test_training_gathers_windows_block_by_block_with_the_same_logits_and_gradients():
    """forward_centres (the training loop's form: windows gathered a few at a time, again in backward) gives the
    logits and weight gradients of forward_windows on the gathered windows."""
    from spikeinterface_esort.network import ESortNetwork, GatheredFirstFilter

    torch.manual_seed(0)
    network = ESortNetwork(16, 12, 3).double().train()
    traces = torch.randn(500, 16, dtype=torch.float64)
    centres = torch.randint(10, 490, (100,))  # more than one block of windows
    assert len(centres) > GatheredFirstFilter.WINDOWS_PER_BLOCK
    gathered = network.forward_windows(gather_windows(traces, centres, 12, torch.float64))
    expected = torch.autograd.grad(gathered.square().sum(), list(network.parameters()))
    blockwise = network.forward_centres(traces, centres)
    torch.testing.assert_close(blockwise, gathered)
    for got, want in zip(torch.autograd.grad(blockwise.square().sum(), list(network.parameters())), expected):
        torch.testing.assert_close(got, want)


def test_drift_mixing_in_blocks_along_the_probe_equals_the_dense_product():
    """On a Neuropixels 1.0 probe (channels numbered along the probe) the drift augmentation's re-sampling is done
    in blocks that read a fraction of the channels, and gives the dense product's values and input gradients."""
    from spikeinterface_esort.network import ChannelMixing, ChannelMixingProduct
    from spikeinterface_esort.tools.datasets import neuropixels_1_probe

    augmentation = DriftAugmentation(neuropixels_1_probe().contact_positions, max_shift_um=20.0,
                                     device=torch.device("cpu"))
    mixing = augmentation.draw(np.random.default_rng(3))
    read = sum((b - a) * (hi - lo) for a, b, lo, hi in mixing.blocks)
    assert read < 0.25 * 384 * 384
    features = torch.randn(40, 384, dtype=torch.float64, requires_grad=True)
    blocked = ChannelMixingProduct.apply(features, ChannelMixing(mixing.matrix.double()))
    dense = features @ mixing.matrix.double()
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=0)
    grad = torch.randn(40, 384, dtype=torch.float64)
    (blocked_grad,) = torch.autograd.grad(blocked, features, grad)
    (dense_grad,) = torch.autograd.grad(dense, features, grad)
    torch.testing.assert_close(blocked_grad, dense_grad, atol=1e-5, rtol=0)
    scrambled = ChannelMixing(mixing.matrix[torch.randperm(384)][:, torch.randperm(384)])  # no band: one block
    assert scrambled.blocks == [(0, 384, 0, 384)]


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
    assert not (order == torch.arange(32)).all()  # the channels are re-ordered along the probe
    features = torch.randn(5, 32 * 3, dtype=torch.float64, requires_grad=True)  # (batch, channels * f2)
    weight = network.spatial_weight().detach().double().requires_grad_()
    bias = torch.randn(32, dtype=torch.float64, requires_grad=True)
    dense = features @ weight.t() + bias
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


def test_training_step_tool_trains_on_saved_annotations_and_reports(small_recording, capsys):
    """The study tool trains the sorter's network on a saved recording's window from a saved sorting, with the
    parameters it is given, and reports each epoch and the held-out accuracy against the annotations."""
    from spikeinterface_esort.tools.training_step import main

    recording, _, truth_folder = small_recording
    main(["--recording", str(truth_folder.parent / "recording"), "--annotations", str(truth_folder),
          "--set", "epochs=2", "train_duration_s=8.0", "--n-jobs", "1",
          "--ground-truth", str(truth_folder), "--score-s", "8", "12"])
    out = capsys.readouterr().out
    assert "4 units" in out and "epochs: " in out
    assert len(out.split("validation loss per epoch: ")[1].splitlines()[0].split(", ")) == 2
    accuracy = float(out.rsplit("mean over 4 units: ", 1)[1].split()[0])
    assert accuracy > 0.8  # ground truth as annotations: the held-out part agrees with them
    # the 4 s after the window, sorted by the trained model and scored against the truth
    scored = out.split("against ground truth on 8-12 s (0.0 s of it in the training window): accuracy ")[1]
    assert float(scored.split(",")[0]) > 0.8
    with pytest.raises(SystemExit):  # --score-s needs --ground-truth
        main(["--recording", str(truth_folder.parent / "recording"), "--annotations", str(truth_folder),
              "--score-s", "8", "12"])
    with pytest.raises(ValueError, match="not a stretch of the recording"):  # refused before training
        main(["--recording", str(truth_folder.parent / "recording"), "--annotations", str(truth_folder),
              "--ground-truth", str(truth_folder), "--score-s", "8", "20"])
    with pytest.raises(ValueError, match="epochs"):
        main(["--recording", str(truth_folder.parent / "recording"), "--annotations", str(truth_folder),
              "--set", "epochs=0"])


def test_load_traces_normalises_without_touching_the_recording():
    """Traces are divided by the noise levels into a new float16 tensor; a recording whose get_traces returns its own
    array is left as it was."""
    from spikeinterface.core import NumpyRecording

    from spikeinterface_esort.training import load_traces

    traces = np.random.default_rng(0).standard_normal((3000, 4)).astype("float32")
    original = traces.copy()
    recording = NumpyRecording(traces, 30000.0)
    noise = np.array([1.0, 2.0, 4.0, 0.5], dtype="float32")
    loaded = load_traces(recording, 0, 3000, noise, chunk_size=1000, progress_bar=False, n_jobs=2)
    assert loaded.dtype == torch.float16
    torch.testing.assert_close(loaded.float(), torch.from_numpy(original / noise), atol=0.01, rtol=0.002)
    np.testing.assert_array_equal(traces, original)


def test_validation_loss_is_taken_on_a_quarter_of_an_epochs_spikes_or_on_every_held_out_spike():
    rng = np.random.default_rng(0)
    spikes = np.sort(rng.choice(np.arange(100, 99000), size=300, replace=False))
    sampler = WindowSampler(spikes, rng.integers(0, 3, size=300), 3, lo=0, hi=100000, window_samples=60, jitter=5)
    assert validation_spikes(sampler, dict(spikes_per_epoch=400)) == 100  # 300 held out, a quarter of 400 drawn
    assert validation_spikes(sampler, dict(spikes_per_epoch=2000)) is None  # fewer held out than 500: all
    assert validation_spikes(sampler, dict(spikes_per_epoch=None)) is None  # as published: all
    centres, targets = sampler.draw(rng, 1, 1.0, validation_spikes(sampler, dict(spikes_per_epoch=400)))
    assert (targets.sum(axis=1) > 0).sum() == 100 and len(centres) == 200
