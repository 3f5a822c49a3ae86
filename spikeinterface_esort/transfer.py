"""Transfer learning: start a network from pretrained weights instead of random ones.

A *backbone* is every layer of ``ESortNetwork`` but the head: two temporal filters
shared by all channels (with a per-channel BatchNorm each) and the spatial filter over
all channels. What transfers to a new network depends on the probe:

- the temporal filters transfer to any probe; at another window length (another
  sampling rate or ``window_ms``) they are resampled in time;
- the per-channel BatchNorms and the spatial filter transfer only when the channel
  layout is the same (the same contact positions up to a translation, in any channel
  order: they are reordered to the recording's channels); otherwise the BatchNorms start
  from the mean over the pretrained channels and the spatial filter is trained from
  scratch. The spatial filter also needs the same kind: dense, or local with the same
  ``spatial_radius_um`` (a dense filter masked to a local one would keep a fraction of
  what it learnt);
- the head is always new, sized to the units of the annotations.

Backbones ship in ``pretrained/`` (``<name>.pt``: float16 state dict; ``<name>.json``:
model card). A path to another ``.pt`` with its card, or to a saved esort model
folder (``model.json`` + ``weights.pt``), works too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .network import ESortNetwork
from .parameters import AUTO_EPOCHS, AUTO_EPOCHS_IMPRINTED, FREEZE_CHOICES, HEAD_INIT_CHOICES

logger = logging.getLogger("spikeinterface_esort")

TEMPORAL_LAYERS = ("temporal1", "temporal2")
CHANNEL_LAYERS = ("temporal1_norm", "temporal2_norm", "spatial", "spatial_norm")
LAYOUT_TOLERANCE_UM = 0.5


@dataclass
class Backbone:
    """Pretrained backbone weights and the recording properties they were trained for."""

    name: str
    state: dict
    window_samples: int
    sampling_frequency: float
    channel_locations: np.ndarray
    temporal_features: tuple[int, int]
    hidden_size: int
    card: dict
    spatial_radius_um: float | None = None  # the local spatial filter's radius (um); None: a dense spatial filter


def pretrained_folder() -> Path:
    """The folder of shipped backbones: ``spikeinterface_esort/pretrained`` in an installed wheel,
    ``pretrained/`` beside the package in a source checkout (editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "pretrained"
    return installed if installed.is_dir() else package.parent / "pretrained"


def available_backbones() -> list[str]:
    """Names of the shipped backbones (``pretrained/<name>.pt`` with ``<name>.json``)."""
    folder = pretrained_folder()
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


def relative_layout(channel_locations: np.ndarray) -> np.ndarray:
    """Contact positions (um) relative to the probe's lowest, leftmost corner."""
    locations = np.asarray(channel_locations, dtype="float64")[:, :2]
    return locations - locations.min(axis=0)


def same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two probes have the same contacts in the same order, up to a translation."""
    if len(a) != len(b):
        return False
    return bool(np.abs(relative_layout(a) - relative_layout(b)).max() <= LAYOUT_TOLERANCE_UM)


def layout_order(pretrained: np.ndarray, recording: np.ndarray) -> np.ndarray | None:
    """Where each recording channel's contact is among the pretrained channels, when both probes have the same
    contact positions up to a translation, in any channel order: ``order[i]`` is the pretrained channel at the
    recording's channel ``i`` (within ``LAYOUT_TOLERANCE_UM``). None when the positions differ."""
    if len(pretrained) != len(recording):
        return None
    a, b = relative_layout(pretrained), relative_layout(recording)
    distance = np.abs(b[:, None, :] - a[None, :, :]).max(axis=2)  # (recording, pretrained), um
    order = distance.argmin(axis=1)
    if distance[np.arange(len(b)), order].max() > LAYOUT_TOLERANCE_UM or len(np.unique(order)) != len(order):
        return None
    return order


def find_model_folder(folder: str | Path) -> Path:
    """The model folder (holding ``model.json``) of a model folder, a ``sorter_output`` folder or a
    ``run_sorter`` folder of esort; ``folder`` itself when none holds one."""
    folder = Path(folder)
    for candidate in (folder, folder / "model", folder / "sorter_output" / "model"):
        if (candidate / "model.json").is_file():
            return candidate
    return folder


def load_backbone(path: str | Path) -> Backbone:
    """A backbone from ``<name>.pt`` + ``<name>.json``, or from a saved esort model (its folder, or the
    ``sorter_output`` or ``run_sorter`` folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = find_model_folder(path)
    if path.is_dir():
        card_file, weights_file = path / "model.json", path / "weights.pt"
    else:
        card_file, weights_file = path.with_suffix(".json"), path.with_suffix(".pt")
    if not card_file.is_file() or not weights_file.is_file():
        raise ValueError(
            f"esort parameter 'pretrained_weights': {path} is neither a backbone (<name>.pt with <name>.json) nor an "
            f"esort model folder (model.json + weights.pt). Shipped backbones: {available_backbones()}."
        )
    try:
        card = json.loads(card_file.read_text(encoding="utf8"))
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        network = card["network"]
        backbone = Backbone(
            name=card.get("name", path.stem),
            state={k: v.float() for k, v in state.items() if not k.startswith("head.")},
            window_samples=int(network["window_samples"]),
            sampling_frequency=float(card["sampling_frequency"]),
            channel_locations=np.asarray(card["channel_locations"], dtype="float64"),
            temporal_features=tuple(network["temporal_features"]),
            hidden_size=int(network["hidden_size"]),
            card=card,
            spatial_radius_um=None if network.get("spatial_radius_um") is None else float(network["spatial_radius_um"]),
        )
    except Exception as err:
        raise ValueError(f"esort parameter 'pretrained_weights': cannot read {weights_file} ({type(err).__name__}: {err}).") from err
    missing = [k for k in ("temporal1.weight", "temporal2.weight") if k not in backbone.state]
    if missing:
        raise ValueError(f"esort parameter 'pretrained_weights': {weights_file} lacks {missing}; not an esort backbone.")
    return backbone


def model_backbone(model) -> Backbone:
    """The backbone of a trained ``ESortModel`` (every layer but its head), to start another network from."""
    network = model.network
    return Backbone(
        name="the saved model", state={k: v for k, v in network.state_dict().items() if not k.startswith("head.")},
        window_samples=network.window_samples, sampling_frequency=model.sampling_frequency,
        channel_locations=model.channel_locations, temporal_features=network.temporal_features,
        hidden_size=network.hidden_size, card={}, spatial_radius_um=network.spatial_radius_um,
    )


def resolve_backbone(value: str | None, channel_locations: np.ndarray, sampling_frequency: float) -> Backbone | None:
    """The backbone named by the ``pretrained_weights`` parameter: None; 'auto' (the shipped backbone of
    the same layout and sampling rate, else of the same sampling rate, else any); a shipped name; or a path."""
    if value is None:
        return None
    names = available_backbones()
    if value == "auto":
        if not names:
            logger.info("transfer: no shipped backbone; training from scratch")
            return None
        # ranked on the cards alone; only the chosen backbone's weights are read
        cards = {name: json.loads((pretrained_folder() / f"{name}.json").read_text(encoding="utf8")) for name in names}

        def rank(name: str) -> tuple:
            locations = np.asarray(cards[name]["channel_locations"], dtype="float64")
            return (
                layout_order(locations, channel_locations) is not None,
                abs(float(cards[name]["sampling_frequency"]) - sampling_frequency) < 1e-6,
                -abs(len(locations) - len(channel_locations)),
            )

        chosen = max(names, key=rank)
        same_probe, same_rate, _ = rank(chosen)
        logger.info(
            "transfer: pretrained_weights='auto' chose the shipped backbone %s (%s; %s)", chosen,
            "same contact positions as the recording" if same_probe else
            f"no shipped backbone has this probe's {len(channel_locations)} contact positions: only its temporal "
            "filters transfer",
            "same sampling rate" if same_rate else
            f"trained at {float(cards[chosen]['sampling_frequency']):g} Hz, the recording is at {sampling_frequency:g} Hz",
        )
        return load_backbone(pretrained_folder() / f"{chosen}.pt")
    if value in names:
        logger.info("transfer: pretrained_weights=%r: the shipped backbone of that name", value)
        return load_backbone(pretrained_folder() / f"{value}.pt")
    path = Path(value)
    if not path.exists() and not path.with_suffix(".pt").exists():
        raise ValueError(
            f"esort parameter 'pretrained_weights'={value!r} is not a shipped backbone ({names}) and no such path exists."
        )
    logger.info("transfer: pretrained_weights=%r: weights from that path", value)
    return load_backbone(path)


def _resample_time(weight: torch.Tensor, samples: int) -> torch.Tensor:
    """Temporal kernels (out, 1, T) resampled to ``samples`` taps, scaled so a response keeps its size."""
    if weight.shape[-1] == samples:
        return weight.clone()
    resampled = F.interpolate(weight, size=samples, mode="linear", align_corners=True)
    return resampled * (weight.shape[-1] / samples)


def _reordered_channel_state(state: dict, order: np.ndarray, features_per_channel: int) -> dict:
    """The per-channel layers' state with the pretrained channels taken in ``order`` (``layout_order``): the
    BatchNorms' per-channel entries, and the spatial filter's weight columns (channel-major, ``features_per_channel``
    columns per channel)."""
    index = torch.as_tensor(order, dtype=torch.long)
    out = dict(state)
    for layer in ("temporal1_norm", "temporal2_norm"):
        for key in ("weight", "bias", "running_mean", "running_var"):
            out[f"{layer}.{key}"] = state[f"{layer}.{key}"][index]
    weight = state["spatial.weight"]  # (hidden, channels * features_per_channel, 1)
    columns = weight.reshape(weight.shape[0], len(order), features_per_channel, *weight.shape[2:])
    out["spatial.weight"] = columns[:, index].reshape(weight.shape)
    return out


def _mean_norm_state(state: dict, prefix: str, channels: int) -> dict:
    """BatchNorm state of ``channels`` channels, each the mean of the pretrained channels."""
    out = {}
    for key in ("weight", "bias", "running_mean", "running_var"):
        out[key] = state[f"{prefix}.{key}"].mean().repeat(channels)
    return out


def _spatial_filter_words(radius_um: float | None) -> str:
    return "dense" if radius_um is None else f"local ({radius_um:g} um)"


@torch.no_grad()
def transfer_backbone(
    network: ESortNetwork, backbone: Backbone, channel_locations: np.ndarray, sampling_frequency: float
) -> dict:
    """Copy into ``network`` what transfers from ``backbone``; returns lists of the layers ``transferred``,
    ``adapted`` (resampled or channel-averaged) and ``from_scratch``, which are also logged, and ``reordered``
    (whether the per-channel layers were taken in the recording's channel order)."""
    report = dict(backbone=backbone.name, transferred=[], adapted=[], from_scratch=[], reordered=False)
    state = backbone.state
    if tuple(network.temporal_features) != tuple(backbone.temporal_features):
        report["from_scratch"] += [*TEMPORAL_LAYERS, *CHANNEL_LAYERS]
    else:
        for layer in TEMPORAL_LAYERS:
            module = getattr(network, layer)
            weight = state[f"{layer}.weight"]
            if layer == "temporal1" and weight.shape[-1] != network.window_samples:
                module.weight.copy_(_resample_time(weight, network.window_samples))
                report["adapted"].append(f"{layer} (resampled {weight.shape[-1]} -> {network.window_samples} samples)")
            else:
                module.weight.copy_(weight)
                report["transferred"].append(layer)
            module.bias.copy_(state[f"{layer}.bias"])
        order = layout_order(backbone.channel_locations, channel_locations)
        same_shape = order is not None and network.hidden_size == backbone.hidden_size
        if same_shape and not np.array_equal(order, np.arange(len(order))):
            state = _reordered_channel_state(state, order, network.temporal_features[1])
            report["reordered"] = True
            logger.info("transfer: the recording has the backbone's contact positions in another channel order; "
                        "its per-channel layers are reordered to the recording's channels")
        for layer in ("temporal1_norm", "temporal2_norm"):
            module = getattr(network, layer)
            if same_shape:
                module.load_state_dict({k[len(layer) + 1 :]: v for k, v in state.items() if k.startswith(layer + ".")})
                report["transferred"].append(layer)
            else:
                for key, value in _mean_norm_state(state, layer, network.num_channels).items():
                    getattr(module, key).copy_(value)
                report["adapted"].append(f"{layer} (mean over the pretrained channels)")
        same_spatial = same_shape and network.spatial_radius_um == backbone.spatial_radius_um
        if same_shape and not same_spatial:
            logger.info("transfer: the backbone's spatial filter is %s, the network's %s: it is trained from scratch",
                        _spatial_filter_words(backbone.spatial_radius_um), _spatial_filter_words(network.spatial_radius_um))
        for layer in ("spatial", "spatial_norm"):
            if same_spatial:
                getattr(network, layer).load_state_dict(
                    {k[len(layer) + 1 :]: v for k, v in state.items() if k.startswith(layer + ".")}
                )
                report["transferred"].append(layer)
            else:
                report["from_scratch"].append(layer)
    report["from_scratch"].append("head")
    logger.info(
        "transfer: from backbone %s: transferred %s; adapted %s; trained from scratch %s",
        backbone.name, report["transferred"] or "nothing", report["adapted"] or "nothing", report["from_scratch"],
    )
    return report


def resolve_freeze(freeze: str, transfer: dict | None, few_shot: bool) -> str:
    """``freeze_layers`` with 'auto' resolved: 'backbone' for few-shot training (a handful of spikes per unit, where
    training every layer forgets what the backbone knew) when every backbone layer was transferred (none trained from
    scratch or adapted), else 'none'."""
    if freeze != "auto":
        return freeze
    return "backbone" if few_shot and transferred_whole(transfer) else "none"


def transferred_whole(transfer: dict | None) -> bool:
    """Whether ``transfer_backbone``'s report has every backbone layer transferred (none trained from scratch or
    adapted): a backbone of the recording's layout and network."""
    return transfer is not None and set(transfer["transferred"]) >= {*TEMPORAL_LAYERS, *CHANNEL_LAYERS}


def imprints_head(head_init: str, transfer: dict | None) -> bool:
    """Whether the head starts imprinted (``training.imprint_head``): ``head_init`` 'imprint', or 'auto' when every
    backbone layer was transferred (a shipped backbone of the recording's layout, or a saved model)."""
    if head_init not in HEAD_INIT_CHOICES:
        raise ValueError(f"esort parameter 'head_init' must be one of {HEAD_INIT_CHOICES}, got {head_init!r}.")
    if head_init != "auto":
        return head_init == "imprint"
    return transferred_whole(transfer)


def resolve_epochs(epochs: int | str, imprinted: bool, few_shot: bool) -> int:
    """``epochs`` with 'auto' resolved: ``AUTO_EPOCHS_IMPRINTED`` when the head starts imprinted (``imprints_head``)
    and the whole window is annotated (not few-shot), else ``AUTO_EPOCHS``."""
    if epochs != "auto":
        return int(epochs)
    return AUTO_EPOCHS_IMPRINTED if imprinted and not few_shot else AUTO_EPOCHS


def freeze_layers(network: ESortNetwork, freeze: str) -> list[str]:
    """Stop gradients of the temporal filters ('temporal') or of the whole backbone ('backbone');
    returns the frozen layer names ('auto': see ``resolve_freeze``, resolved before)."""
    frozen_by_choice = {"none": (), "temporal": TEMPORAL_LAYERS, "backbone": (*TEMPORAL_LAYERS, *CHANNEL_LAYERS)}
    if freeze not in frozen_by_choice:
        raise ValueError(f"esort parameter 'freeze_layers' must be one of {FREEZE_CHOICES}, got {freeze!r}.")
    layers = frozen_by_choice[freeze]
    for layer in layers:
        for p in getattr(network, layer).parameters():
            p.requires_grad_(False)
    return list(layers)


def backbone_state(network: ESortNetwork) -> dict:
    """The backbone's state dict (no head), float16 on the CPU: what a shipped ``.pt`` holds."""
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
            for k, v in network.state_dict().items() if not k.startswith("head.")}
