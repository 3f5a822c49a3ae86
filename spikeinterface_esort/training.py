"""Training: fit the E-Sort network to annotated spikes of the training window.

Recipe (Han & Wang 2024): windows centred within +-jitter samples of an annotated
spike are positives, labelled with every unit firing there (multi-label); an equal
number of random windows with no annotated spike within +-jitter are negatives;
binary cross-entropy; Adam. The last ``validation_fraction`` of each piece of the training
window is held out: its loss stops training early, and it is where ``validation`` later
chooses the detection thresholds.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from spikeinterface.core import BaseRecording
from tqdm.auto import tqdm

from .annotation import Annotations, TrainingWindow
from .preprocessing import read_block
from .network import ChannelMixing, ESortNetwork

if TYPE_CHECKING:
    from .transfer import Backbone

logger = logging.getLogger("spikeinterface_esort")


@dataclass
class TrainingSplit:
    """Frames of the training recording (see ``annotation.TrainingWindow``): training part ``[start, split)``,
    validation part ``[split, stop)``."""

    start: int
    split: int
    stop: int


def split_window(window: TrainingWindow) -> TrainingSplit:
    """The training and validation parts of ``window``'s training recording."""
    return TrainingSplit(0, window.num_training_samples, window.num_samples)


def load_traces(
    recording: BaseRecording,
    start: int,
    stop: int,
    noise_levels: np.ndarray,
    chunk_size: int,
    progress_bar: bool,
    n_jobs: int = 1,
) -> torch.Tensor:
    """Noise-normalised traces (samples, channels) of frames [start, stop) of segment 0, as float16; chunks are
    read and preprocessed by ``n_jobs`` threads (SpikeInterface's filters release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    out = torch.empty((stop - start, recording.get_num_channels()), dtype=torch.float16)
    scale = (1.0 / noise_levels).astype("float32")

    def read(s: int) -> None:
        e = min(s + chunk_size, stop)
        # one pass into a new array: read_block may return a view of the recording's own traces (never written)
        block = np.multiply(read_block(recording, s, e, segment_index=0), scale, dtype=np.float32)
        out[s - start : e - start] = torch.from_numpy(block)

    starts = range(start, stop, chunk_size)
    with ThreadPoolExecutor(max_workers=max(1, int(n_jobs)), thread_name_prefix="esort-load") as pool:
        for _ in tqdm(pool.map(read, starts), total=len(starts), desc="esort training traces", unit="chunk",
                      disable=not progress_bar):
            pass
    return out


class WindowSampler:
    """Draws labelled window centres from the annotated spikes of one part of the training window.

    ``spike_samples`` are sorted positions in the traces tensor; centres are kept where the
    whole window lies in ``[lo, hi)``. Positives are drawn around the spikes where ``anchors``
    is True (default: all); labels and negatives always account for every annotated spike.
    """

    def __init__(
        self,
        spike_samples: np.ndarray,
        spike_units: np.ndarray,
        num_units: int,
        lo: int,
        hi: int,
        window_samples: int,
        jitter: int,
        anchors: np.ndarray | None = None,
    ):
        self.spike_samples = spike_samples
        self.spike_units = spike_units
        self.num_units = num_units
        self.jitter = jitter
        self.center_lo = lo + window_samples // 2
        self.center_hi = hi - (window_samples - 1 - window_samples // 2)
        inside = (spike_samples >= self.center_lo) & (spike_samples < self.center_hi)
        if anchors is not None:
            inside &= anchors
        self.anchor_samples = spike_samples[inside]
        self.anchor_units = spike_units[inside]

    def _hits(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left = np.searchsorted(self.spike_samples, centres - self.jitter, side="left")
        right = np.searchsorted(self.spike_samples, centres + self.jitter, side="right")
        return left, right - left

    def labels(self, centres: np.ndarray) -> np.ndarray:
        """(windows, units) float32 targets: 1 where the unit fires within +-jitter of the centre."""
        targets = np.zeros((len(centres), self.num_units), dtype=np.float32)
        left, counts = self._hits(centres)
        rows = np.arange(len(centres))
        for k in range(int(counts.max()) if len(counts) else 0):
            has = counts > k
            targets[rows[has], self.spike_units[left[has] + k]] = 1.0
        return targets

    def draw(
        self, rng: np.random.Generator, windows_per_spike: int, negative_ratio: float, num_spikes: int | None = None,
        unit_balance: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positive centres (each anchor spike shifted by a random offset within +-jitter) and as many negative
        centres times ``negative_ratio``; returns (centres, targets), shuffled. With ``num_spikes``, exactly that many
        anchor spikes are drawn: a random subset where there are more (another at each draw), else every anchor
        spike as many times as fits, the remainder drawn at random. With ``unit_balance`` b > 0, the anchor spikes
        (``num_spikes`` of them, or as many as there are) are drawn with replacement, each with a probability
        proportional to n_u ** -b where n_u is its unit's count of anchor spikes: b = 1 gives every unit the same
        share of positives, 0 shares them in proportion to the units' spike counts."""
        anchors = self.anchor_samples
        if unit_balance > 0 and len(anchors) > 0:
            counts = np.bincount(self.anchor_units, minlength=self.num_units).astype(np.float64)
            weights = counts[self.anchor_units] ** -unit_balance
            anchors = anchors[rng.choice(len(anchors), size=num_spikes or len(anchors), p=weights / weights.sum())]
        elif num_spikes is not None and len(anchors) > 0:
            anchors = anchors[np.resize(rng.permutation(len(anchors)), num_spikes)]
        anchors = np.repeat(anchors, windows_per_spike)
        positives = anchors + rng.integers(-self.jitter, self.jitter + 1, size=len(anchors))
        positives = positives[(positives >= self.center_lo) & (positives < self.center_hi)]
        num_negatives = int(round(len(positives) * negative_ratio))
        negatives = np.zeros(0, dtype=np.int64)
        for _ in range(100):
            if len(negatives) >= num_negatives:
                break
            candidates = rng.integers(self.center_lo, self.center_hi, size=2 * (num_negatives - len(negatives)) + 16)
            negatives = np.concatenate([negatives, candidates[self._hits(candidates)[1] == 0]])
        centres = np.concatenate([positives, negatives[:num_negatives]]).astype(np.int64)
        centres = centres[rng.permutation(len(centres))]
        return centres, self.labels(centres)


class DriftAugmentation:
    """Re-samples windows at channel positions shifted along the probe's depth (y) axis by a random
    shift in [-max_shift_um, max_shift_um] (1 um steps), with SpikeInterface's kriging interpolation
    kernel (sigma 20 um, p 2, extrapolating at the borders, as its motion-correction presets)."""

    def __init__(self, channel_locations: np.ndarray, max_shift_um: float, device: torch.device):
        from spikeinterface.preprocessing.preprocessing_tools import get_spatial_interpolation_kernel

        locations = np.asarray(channel_locations, dtype="float64")[:, :2]
        self.shifts_um = np.arange(-np.floor(max_shift_um), np.floor(max_shift_um) + 1)
        # one call for every shift: the targets of all shifts side by side share the source kernel's inverse (one
        # pseudo-inverse instead of one per shift: this set-up 2.1 s -> 0.8 s at 384 channels); each target column
        # is computed and normalised on its own, so each shift's kernel is the one a call of its own gives
        targets = np.concatenate([locations + np.array([0.0, shift]) for shift in self.shifts_um])
        kernels = get_spatial_interpolation_kernel(
            locations, targets, method="kriging", sigma_um=20.0, p=2, force_extrapolate=True,
        ).reshape(len(locations), len(self.shifts_um), len(locations)).transpose(1, 0, 2)
        self.kernels = torch.from_numpy(np.ascontiguousarray(kernels, dtype="float32")).to(device)  # (shifts, source, target)
        self.mixings = [ChannelMixing(kernel) for kernel in self.kernels]  # banded along the probe: in blocks

    def draw(self, rng: np.random.Generator) -> ChannelMixing:
        """The (source, target) channel mixing of one random shift, for ``ESortNetwork.forward_windows``
        (shifted windows are ``einsum("tbs,sc->tbc", windows, mixing.matrix)``; the network mixes after its first
        filter)."""
        return self.mixings[int(rng.integers(len(self.shifts_um)))]


def drift_augmentation_range(drift_augmentation_um: float, channel_locations: np.ndarray | None) -> float:
    """Largest simulated drift (um): ``drift_augmentation_um``, at most a quarter of the probe's depth
    extent (a short probe has too few rows to re-sample a larger shift); 0 without locations."""
    if channel_locations is None or drift_augmentation_um <= 0:
        return 0.0
    depth = np.ptp(np.asarray(channel_locations)[:, 1])
    return float(min(drift_augmentation_um, depth / 4.0))


def validation_spikes(sampler: WindowSampler, params: dict) -> int | None:
    """Held-out spikes the validation loss is taken on each epoch: a random quarter of ``spikes_per_epoch`` (drawn
    once), or every held-out spike where there are fewer or ``spikes_per_epoch`` is None (as published)."""
    if params.get("spikes_per_epoch") is None:
        return None
    cap = max(1, params["spikes_per_epoch"] // 4)
    return cap if len(sampler.anchor_samples) > cap else None


def _batches(num: int, batch_size: int):
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        if stop - start >= 2:  # BatchNorm needs two windows
            yield start, stop


@dataclass
class TrainingTask:
    """One network trained on one recording's annotated windows (``traces``: (samples, channels), normalised)."""

    network: ESortNetwork
    traces: torch.Tensor
    train_sampler: WindowSampler
    validation_sampler: WindowSampler | None = None


IMPRINT_SPIKES = 10000  # annotated spikes whose windows imprint the head (all of them where there are fewer)
IMPRINT_LOGIT = 4.0  # the imprinted head's logit at a unit's mean feature vector (minus that at the rest's mean)


def imprint_head(network: ESortNetwork, traces: torch.Tensor, sampler: WindowSampler, params: dict,
                 device: torch.device) -> int:
    """Set each unit's head weights from the backbone's features of its annotated windows (weight imprinting): with
    mu_u the mean hidden features of windows labelled u and mu_rest that of every other window (both drawn as training
    draws them, batch norms on batch statistics), the unit's logit is the projection on mu_u - mu_rest, +IMPRINT_LOGIT
    at mu_u and -IMPRINT_LOGIT at mu_rest. A pretrained backbone's features already separate units, so the head starts
    where training from a random head arrives after several epochs. The batch norms' running statistics are left as
    they were. Returns the number of units imprinted (units without a window keep their random weights)."""
    rng = np.random.default_rng(params["seed"] + 1)
    num_spikes = min(IMPRINT_SPIKES, max(len(sampler.anchor_samples), 1))
    centres, targets = sampler.draw(rng, 1, params["negative_ratio"], num_spikes, params.get("unit_balance", 0.0))
    if len(centres) == 0:
        return 0
    buffers = {name: b.clone() for name, b in network.named_buffers()}
    hidden, units = network.hidden_size, network.num_units
    unit_sums = torch.zeros(units, hidden, dtype=torch.float64, device=device)
    total = torch.zeros(hidden, dtype=torch.float64, device=device)
    network.to(device).train()
    traces = traces.to(device)
    with torch.no_grad():
        for a, b in _batches(len(centres), params["batch_size"]):
            features = network.features_centres(traces, torch.from_numpy(centres[a:b]).to(device)).double()
            labels = torch.from_numpy(targets[a:b]).to(device).double()
            unit_sums += labels.T @ features
            total += features.sum(0)
        counts = torch.from_numpy(targets.sum(0)).to(device).double()
        mean_unit = unit_sums / counts.clamp(min=1)[:, None]
        mean_rest = (total[None, :] - unit_sums) / (len(centres) - counts).clamp(min=1)[:, None]
        difference = mean_unit - mean_rest
        weight = 2 * IMPRINT_LOGIT * difference / (difference ** 2).sum(1, keepdim=True).clamp(min=1e-12)
        bias = -(weight * (mean_unit + mean_rest) / 2).sum(1)
        imprinted = (counts > 0) & ((difference ** 2).sum(1) > 1e-12)
        network.head.weight[imprinted, :, 0] = weight[imprinted].to(network.head.weight.dtype)
        network.head.bias[imprinted] = bias[imprinted].to(network.head.bias.dtype)
        for name, b in network.named_buffers():
            b.copy_(buffers[name])
    return int(imprinted.sum())


def train_network(
    network: ESortNetwork,
    traces: torch.Tensor,
    train_sampler: WindowSampler,
    validation_sampler: WindowSampler | None,
    params: dict,
    device: torch.device,
    progress_bar: bool,
    augmentation: DriftAugmentation | None = None,
) -> dict:
    """Fit ``network`` in place with Adam and binary cross-entropy; keep the weights of the epoch with
    the lowest validation loss (training loss when there is no validation spike). Returns the history."""
    return train_networks([TrainingTask(network, traces, train_sampler, validation_sampler)], params, device,
                          progress_bar, augmentation)


def train_networks(
    tasks: list[TrainingTask],
    params: dict,
    device: torch.device,
    progress_bar: bool,
    augmentation: DriftAugmentation | None = None,
) -> dict:
    """Fit the tasks' networks in place, together: one Adam over all their parameters (layers the networks share
    count once), binary cross-entropy; each epoch draws every task's windows and runs all their batches (in a
    random order across tasks when there are several). Keeps the weights of the epoch with the lowest validation
    loss, the mean over tasks (a task without validation spikes counts its training loss). Returns the history:
    per epoch ``train_loss``, ``validation_loss``, ``epoch_s``; ``best_epoch``, ``best_validation_loss``."""
    rng = np.random.default_rng(params["seed"])
    mixed_precision = params.get("training_dtype", "float32") == "bfloat16"
    traces, validations = [], []
    for task in tasks:
        task.network.to(device)
        # in mixed precision the first matrix product reads the windows in bfloat16: the traces are stored so once
        # (the values autocast would give every gathered window; as small as load_traces' float16), not cast per batch
        traces.append(task.traces.to(device, torch.bfloat16) if mixed_precision else task.traces.to(device))
        validation = None
        if task.validation_sampler is not None and len(task.validation_sampler.anchor_samples) > 0:
            v_centres, v_targets = task.validation_sampler.draw(rng, 1, params["negative_ratio"],
                                                                validation_spikes(task.validation_sampler, params))
            validation = (torch.from_numpy(v_centres).to(device), torch.from_numpy(v_targets).to(device))
        validations.append(validation)
    parameters = {id(p): p for task in tasks for p in task.network.parameters() if p.requires_grad}
    optimiser = torch.optim.Adam(list(parameters.values()), lr=params["learning_rate"])
    loss_fn = torch.nn.BCEWithLogitsLoss()

    history = dict(train_loss=[], validation_loss=[], epoch_s=[])
    best_loss, best_states, best_epoch, stale = np.inf, None, -1, 0
    epochs = tqdm(range(params["epochs"]), desc="esort training", unit="epoch", disable=not progress_bar)
    for epoch in epochs:
        t0 = time.perf_counter()
        batches = []  # (task, centres, targets)
        for i, task in enumerate(tasks):
            centres, targets = task.train_sampler.draw(rng, params["windows_per_spike"], params["negative_ratio"],
                                                       params.get("spikes_per_epoch"), params.get("unit_balance", 0.0))
            centres, targets = torch.from_numpy(centres).to(device), torch.from_numpy(targets).to(device)
            batches += [(i, centres[a:b], targets[a:b]) for a, b in _batches(len(centres), params["batch_size"])]
        order = rng.permutation(len(batches)) if len(tasks) > 1 else range(len(batches))
        for task in tasks:
            task.network.train()
        total, count = 0.0, 0
        for j in order:
            i, centres, targets = batches[j]
            mixing = augmentation.draw(rng) if augmentation is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
                logits = tasks[i].network.forward_centres(traces[i], centres, mixing)
            loss = loss_fn(logits.float(), targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(centres)
            count += len(centres)
        train_loss = total / max(count, 1)
        validation_loss = float(np.mean([
            evaluate_loss(task.network, traces[i], validations[i], params["batch_size"], mixed_precision)
            if validations[i] is not None else train_loss for i, task in enumerate(tasks)
        ]))
        history["train_loss"].append(train_loss)
        history["validation_loss"].append(validation_loss)
        history["epoch_s"].append(time.perf_counter() - t0)
        epochs.set_postfix(train=f"{train_loss:.4f}", validation=f"{validation_loss:.4f}")
        logger.info("training: epoch %d train loss %.5f validation loss %.5f", epoch + 1, train_loss, validation_loss)
        if validation_loss < best_loss - 1e-6:
            best_loss, best_epoch, stale = validation_loss, epoch, 0
            best_states = [copy.deepcopy(task.network.state_dict()) for task in tasks]
        else:
            stale += 1
            if stale >= params["patience"]:
                logger.info("training: early stop after epoch %d (best epoch %d)", epoch + 1, best_epoch + 1)
                break
    for task, state in zip(tasks, best_states or []):
        task.network.load_state_dict(state)
    for task in tasks:
        task.network.eval()
    history["best_epoch"] = best_epoch + 1
    history["best_validation_loss"] = float(best_loss)
    return history


@torch.no_grad()
def evaluate_loss(network: ESortNetwork, traces: torch.Tensor, windows: tuple, batch_size: int,
                  mixed_precision: bool = False) -> float:
    """Mean binary cross-entropy of ``network`` (eval mode) on the (centres, targets) ``windows``; in bfloat16
    autocast with ``mixed_precision``, as in training."""
    centres, targets = windows
    network.eval()
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    total = 0.0
    for start in range(0, len(centres), batch_size):
        with torch.autocast(traces.device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            logits = network.forward_centres(traces, centres[start : start + batch_size])
        total += float(loss_fn(logits.float(), targets[start : start + batch_size]))
    return total / max(targets.numel(), 1)


def first_spikes_per_unit(annotations: Annotations, stop: int, k: int) -> np.ndarray:
    """Mask of the first ``k`` annotated spikes (in time, uncertain ones left out) of each unit among those before
    frame ``stop``."""
    mask = np.zeros(len(annotations.sample_index), dtype=bool)
    for u in range(annotations.num_units):
        mine = np.flatnonzero((annotations.unit_index == u) & (annotations.sample_index < stop) & annotations.certain)
        mask[mine[:k]] = True
    return mask


def make_samplers(
    annotations: Annotations,
    split: TrainingSplit,
    window_samples: int,
    jitter: int,
    spikes_per_unit: int | None = None,
) -> tuple[WindowSampler, WindowSampler | None]:
    """Samplers over the traces of the whole training window (index 0 = ``split.start``); the uncertain
    annotated spikes are not positives (nor negatives); with ``spikes_per_unit`` k, only the first k spikes of each
    unit are positives (few-shot)."""
    samples = annotations.sample_index - split.start
    args = (annotations.unit_index, annotations.num_units)
    certain = None if annotations.uncertain is None else annotations.certain
    anchors = certain if spikes_per_unit is None else first_spikes_per_unit(annotations, split.split, spikes_per_unit)
    train = WindowSampler(samples, *args, 0, split.split - split.start, window_samples, jitter, anchors)
    validation = None
    if split.stop > split.split:
        validation = WindowSampler(samples, *args, split.split - split.start, split.stop - split.start, window_samples,
                                   jitter, certain)
    return train, validation


def fit_network(
    traces: torch.Tensor,
    annotations: Annotations,
    split: TrainingSplit,
    window_samples: int,
    jitter: int,
    params: dict,
    device: torch.device,
    progress_bar: bool,
    channel_locations: np.ndarray | None = None,
    backbone: "Backbone | None" = None,
    sampling_frequency: float | None = None,
) -> tuple[ESortNetwork, dict]:
    """A new network for the traces' channels and the annotated units, initialised from ``seed`` (and from
    ``backbone`` where its layers transfer, see ``transfer``), with ``freeze_layers`` frozen, and trained."""
    from .transfer import freeze_layers, imprints_head, resolve_epochs, resolve_freeze, transfer_backbone

    torch.manual_seed(params["seed"])
    network = ESortNetwork(
        traces.shape[1], window_samples, annotations.num_units, tuple(params["temporal_features"]), params["hidden_size"],
        params.get("spatial_radius_um"),
    )
    transfer = None
    if backbone is not None:
        transfer = transfer_backbone(network, backbone, channel_locations, sampling_frequency)
    if network.spatial_radius_um is not None:
        if channel_locations is None:
            raise ValueError("esort parameter 'spatial_radius_um' needs the recording's channel locations (attach its probe).")
        network.set_channel_locations(channel_locations)
        logger.info("training: local spatial filter, each feature reads %d of %d channels on average (radius %g um)",
                    round(float(network.spatial_mask.sum(1).mean())), network.num_channels, network.spatial_radius_um)
    k = params["annotated_spikes_per_unit"]
    freeze = resolve_freeze(params["freeze_layers"], transfer, few_shot=k is not None)
    if freeze != params["freeze_layers"]:
        logger.info("training: freeze_layers %s -> %s (%s)", params["freeze_layers"], freeze,
                    "few-shot training from a whole transferred backbone" if freeze == "backbone" else
                    "not few-shot from a whole transferred backbone")
    frozen = freeze_layers(network, freeze)
    if frozen:
        logger.info("training: frozen layers %s", frozen)
    train_sampler, validation_sampler = make_samplers(annotations, split, window_samples, jitter, k)
    held_out = "" if validation_sampler is None else f", {len(validation_sampler.anchor_samples)} held out"
    logger.info(
        "training: %d annotated spikes of %d units%s%s; window %d samples, jitter +-%d samples",
        len(train_sampler.anchor_samples), annotations.num_units, held_out,
        "" if k is None else f" (first {k} per unit)", window_samples, jitter,
    )
    imprinted = imprints_head(params["head_init"], transfer)
    if imprinted:
        units = imprint_head(network, traces, train_sampler, params, device)
        logger.info("training: head imprinted from the backbone's features of %d of %d units' annotated windows",
                    units, annotations.num_units)
    epochs = resolve_epochs(params["epochs"], imprinted, few_shot=k is not None)
    if epochs != params["epochs"]:
        logger.info("training: epochs auto -> %d (%s)", epochs,
                    "head imprinted from a whole transferred backbone" if imprinted and k is None else
                    "few-shot training" if imprinted else "head trained from random weights")
        params = dict(params, epochs=epochs)
    augmentation = None
    max_shift = drift_augmentation_range(params["drift_augmentation_um"], channel_locations)
    if max_shift >= 1.0:
        augmentation = DriftAugmentation(channel_locations, max_shift, device)
    logger.info("training: drift augmentation %s", f"+-{max_shift:g} um" if augmentation else "off")
    history = train_network(
        network, traces, train_sampler, validation_sampler, params, device, progress_bar, augmentation
    )
    for p in network.parameters():
        p.requires_grad_(True)
    history["transfer"] = transfer
    history["frozen_layers"] = frozen
    history["head_imprinted"] = imprinted
    history["epochs"] = epochs
    return network, history
