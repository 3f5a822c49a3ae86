"""Training speed: milliseconds per training batch of the sorter's network, and the forms it replaced, side by side.

    python -m spikeinterface_esort.tools.training_speed --channels 64 384 --batches 12 --rounds 5

For each channel count, a network with the sorter's default settings (window, features, local spatial filter,
drift augmentation, batch size) and ``channels / 5`` units is trained on random noise-level traces (float16, as
``training.load_traces`` keeps them) with the training loop's step (forward, binary cross-entropy, backward, Adam)
in three forms, interleaved round by round so that a shared machine's drift hits each alike:

- ``sorter``: as ``training.train_networks`` runs it (windows gathered a few at a time, ``forward_centres``; the
  drift re-sampling in blocks along the probe, ``network.ChannelMixing``);
- ``whole windows``: the batch's windows gathered whole first (``gather_windows`` + ``forward_windows``), blocked
  re-sampling;
- ``whole windows, dense re-sampling``: as above with the re-sampling as one dense (channels x channels) product.

Printed: the median milliseconds per batch over the rounds (each round's figure the median of its batches after
two warm-up batches), wall time and CPU time of the process (all threads: less sensitive than wall time to other
work on a shared machine). Random weights and labels: the cost, not the learning, is measured.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FORMS = ("sorter", "whole windows", "whole windows, dense re-sampling")


def _probe_locations(channels: int) -> np.ndarray:
    from .datasets import make_probe, neuropixels_1_probe

    if channels <= 384 and channels % 2 == 0 and channels >= 32:
        return neuropixels_1_probe(channels).contact_positions
    return make_probe("grid", channels).contact_positions


def measure(channels: int, batches: int, rounds: int, threads: int, seed: int = 0) -> dict:
    """Median milliseconds per training batch of each form of ``FORMS`` at ``channels`` channels."""
    import torch

    from ..network import ESortNetwork, gather_windows, network_window_samples
    from ..parameters import default_params
    from ..training import DriftAugmentation, drift_augmentation_range

    torch.set_num_threads(threads)
    params = default_params()
    locations = _probe_locations(channels)
    window = network_window_samples(params["window_ms"], 30000.0)
    units = max(1, channels // 5)
    torch.manual_seed(seed)
    network = ESortNetwork(channels, window, units, tuple(params["temporal_features"]), params["hidden_size"],
                           params["spatial_radius_um"])
    network.set_channel_locations(locations)
    network.train()
    shift = drift_augmentation_range(params["drift_augmentation_um"], locations)
    augmentation = DriftAugmentation(locations, shift, torch.device("cpu")) if shift >= 1 else None
    traces = torch.randn(30000 * 20, channels).half()
    optimiser = torch.optim.Adam(network.parameters(), lr=params["learning_rate"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    batch = params["batch_size"]

    def step(form: str) -> float:
        centres = torch.from_numpy(rng.integers(window, traces.shape[0] - window, batch))
        targets = (torch.rand(batch, units) < 0.02).float()
        mixing = augmentation.draw(rng) if augmentation is not None else None
        start, cpu = time.perf_counter(), time.process_time()
        if form == "sorter":
            logits = network.forward_centres(traces, centres, mixing)
        else:
            if form == FORMS[2] and mixing is not None:
                mixing = mixing.matrix
            logits = network.forward_windows(gather_windows(traces, centres, window), mixing)
        loss = loss_fn(logits, targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start, time.process_time() - cpu

    wall, cpu = {form: [] for form in FORMS}, {form: [] for form in FORMS}
    for _ in range(rounds):
        for form in FORMS:
            times = np.array([step(form) for _ in range(batches + 2)][2:])
            wall[form].append(float(np.median(times[:, 0])))
            cpu[form].append(float(np.median(times[:, 1])))
    return {form: (1000.0 * float(np.median(wall[form])), 1000.0 * float(np.median(cpu[form]))) for form in FORMS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[384])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per form and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    import os
    import platform

    import torch

    threads = args.threads or os.cpu_count() or 1
    print(f"{platform.machine()}, torch {torch.__version__}, {threads} threads, CPU")
    print("| channels | form | ms per batch (wall) | CPU ms per batch (all threads) |")
    print("| --- | --- | --- | --- |")
    for channels in args.channels:
        result = measure(channels, args.batches, args.rounds, threads)
        for form in FORMS:
            print(f"| {channels} | {form} | {result[form][0]:.1f} | {result[form][1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
