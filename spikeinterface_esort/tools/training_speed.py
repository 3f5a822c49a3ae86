"""Training speed: milliseconds per training batch of the sorter's network, and the forms it replaced, side by side.

    python -m spikeinterface_esort.tools.training_speed --channels 64 384 --batches 12 --rounds 5

For each channel count, a network with the sorter's default settings (window, features, local spatial filter,
drift augmentation, batch size) and ``channels / 5`` units is trained on random noise-level traces (float16, as
``training.load_traces`` keeps them) with the training loop's step (forward, binary cross-entropy, backward, Adam)
in four forms, interleaved round by round so that a shared machine's drift hits each alike:

- ``sorter``: as ``training.train_networks`` runs it (windows gathered a few at a time, ``forward_centres``; the
  drift re-sampling in blocks along the probe, ``network.ChannelMixing``; torch's fused Adam, ``training.adam``);
- ``sorter, unfused Adam``: as above with torch's default (unfused) Adam, the same update;
- ``whole windows``: the batch's windows gathered whole first (``gather_windows`` + ``forward_windows``), blocked
  re-sampling;
- ``whole windows, dense re-sampling``: as above with the re-sampling as one dense (channels x channels) product.

Printed: the median milliseconds per batch over the rounds (each round's figure the median of its batches after
two warm-up batches), wall time and CPU time of the process (all threads: less sensitive than wall time to other
work on a shared machine), and the wall time of the optimiser's step alone. Random weights and labels: the cost, not the learning, is measured.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

FORMS = ("sorter", "sorter, unfused Adam", "whole windows", "whole windows, dense re-sampling")


def _probe_locations(channels: int) -> np.ndarray:
    from .datasets import make_probe, neuropixels_1_probe

    if channels <= 384 and channels % 2 == 0 and channels >= 32:
        return neuropixels_1_probe(channels).contact_positions
    return make_probe("grid", channels).contact_positions


def measure(channels: int, batches: int, rounds: int, threads: int, seed: int = 0, batch_size: int | None = None) -> dict:
    """Median milliseconds per training batch of each form of ``FORMS`` at ``channels`` channels, batches of
    ``batch_size`` windows (default: the sorter's): (wall, CPU of all threads, wall of the optimiser's step)."""
    import torch

    from ..network import ESortNetwork, gather_windows, network_window_samples
    from ..parameters import default_params
    from ..training import DriftAugmentation, adam, drift_augmentation_range

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
    optimisers = {form: adam(list(network.parameters()), params["learning_rate"]) for form in FORMS}
    optimisers[FORMS[1]] = torch.optim.Adam(network.parameters(), lr=params["learning_rate"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    batch = batch_size or params["batch_size"]

    def step(form: str) -> float:
        centres = torch.from_numpy(rng.integers(window, traces.shape[0] - window, batch))
        targets = (torch.rand(batch, units) < 0.02).float()
        mixing = augmentation.draw(rng) if augmentation is not None else None
        start, cpu = time.perf_counter(), time.process_time()
        if form in FORMS[:2]:
            logits = network.forward_centres(traces, centres, mixing)
        else:
            if form == FORMS[3] and mixing is not None:
                mixing = mixing.matrix
            logits = network.forward_windows(gather_windows(traces, centres, window), mixing)
        loss = loss_fn(logits, targets)
        optimisers[form].zero_grad(set_to_none=True)
        loss.backward()
        before_step = time.perf_counter()
        optimisers[form].step()
        end = time.perf_counter()
        return end - start, time.process_time() - cpu, end - before_step

    times = {form: [] for form in FORMS}
    for _ in range(rounds):
        for form in FORMS:
            times[form].append(np.median(np.array([step(form) for _ in range(batches + 2)][2:]), axis=0))
    return {form: tuple(1000.0 * np.median(np.array(times[form]), axis=0)) for form in FORMS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[384])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per form and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[None],
                        help="windows per batch, one or several (default: the sorter's batch_size)")
    args = parser.parse_args(argv)
    import os
    import platform

    import torch

    threads = args.threads or os.cpu_count() or 1
    print(f"{platform.machine()}, torch {torch.__version__}, {threads} threads, CPU")
    from ..parameters import default_params

    print("| channels | windows per batch | form | ms per batch (wall) | CPU ms per batch (all threads) "
          "| of which the optimiser step (ms, wall) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for channels in args.channels:
        for batch_size in args.batch_size:
            result = measure(channels, args.batches, args.rounds, threads, batch_size=batch_size)
            size = batch_size or default_params()["batch_size"]
            for form in FORMS:
                wall, cpu, optimiser = result[form]
                print(f"| {channels} | {size} | {form} | {wall:.1f} | {cpu:.1f} | {optimiser:.1f} |", flush=True)


if __name__ == "__main__":
    main()
