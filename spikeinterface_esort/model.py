"""``ESortModel``: a trained E-Sort network and everything needed to apply it.

The model keeps the network, the recording properties it was trained for (sampling
rate, channel ids and locations, per-channel noise levels used to normalise traces),
the unit ids of its head, and the per-unit detection thresholds chosen on annotated
data. It saves as ``weights.pt`` (a ``state_dict``, loaded with ``weights_only=True``)
plus ``model.json`` (no pickled code).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .device import resolve_dtype
from .network import ESortNetwork, FoldedNetwork
from .postprocessing import detect_spikes, detection_margin, strided_taps, triangular_kernel

MODEL_FORMAT_VERSION = 2  # 2: the network may have a local spatial filter (spatial_radius_um); 1 otherwise


def find_model_folder(folder: str | Path) -> Path:
    """The model folder (holding ``model.json``) of a model folder, a ``sorter_output`` folder or a
    ``run_sorter`` folder of esort; ``folder`` itself when none holds one."""
    folder = Path(folder)
    for candidate in (folder, folder / "model", folder / "sorter_output" / "model"):
        if (candidate / "model.json").is_file():
            return candidate
    return folder


class ESortModel:
    """A trained E-Sort network with its recording metadata and detection thresholds."""

    def __init__(
        self,
        network: ESortNetwork,
        sampling_frequency: float,
        channel_ids: np.ndarray,
        channel_locations: np.ndarray,
        noise_levels: np.ndarray,
        unit_ids: np.ndarray,
        smoothing_taps: int,
        thresholds: np.ndarray | None = None,
        preprocessing: dict | None = None,
        validation: dict | None = None,
        params: dict | None = None,
    ):
        self.network = network
        self.sampling_frequency = float(sampling_frequency)
        self.channel_ids = np.asarray(channel_ids)
        self.channel_locations = np.asarray(channel_locations, dtype="float64")
        self.noise_levels = np.asarray(noise_levels, dtype="float32")
        self.unit_ids = np.asarray(unit_ids)
        self.smoothing_taps = int(smoothing_taps)
        self.thresholds = (
            np.full(len(self.unit_ids), 0.5, dtype="float32") if thresholds is None else np.asarray(thresholds, "float32")
        )
        self.preprocessing = dict(preprocessing or {})
        self.validation = validation or {}
        self.params = dict(params or {})
        self._kernel = triangular_kernel(self.smoothing_taps)
        self._folded: tuple | None = None  # (weights' state, FoldedNetwork), rebuilt when the weights change

    # geometry of a detection block ------------------------------------------------------
    @property
    def window_samples(self) -> int:
        return self.network.window_samples

    def margin_before(self, stride: int = 1) -> int:
        """Trace samples needed before the first sample where spikes are detected."""
        return self.network.window_center + detection_margin(strided_taps(self.smoothing_taps, stride)) * stride

    def margin_after(self, stride: int = 1) -> int:
        """Trace samples needed after the last sample where spikes are detected."""
        taps = strided_taps(self.smoothing_taps, stride)
        return self.window_samples - 1 - self.network.window_center + detection_margin(taps) * stride + stride - 1

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> "ESortModel":
        self.network.to(device)
        return self

    # inference ---------------------------------------------------------------------------
    @property
    def inference_dtype(self) -> str:
        """Precision of the folded network at inference: the ``inference_dtype`` parameter on this model's device
        ('auto' resolved; emulated precisions refused, see ``device.resolve_dtype``)."""
        return resolve_dtype("inference_dtype", self.params.get("inference_dtype", "float32"), self.device)

    def folded_network(self) -> FoldedNetwork:
        """The network in eval mode with its batch norms folded (see ``FoldedNetwork``); rebuilt only when
        the weights, device or ``inference_dtype`` change."""
        tensors = list(self.network.parameters()) + list(self.network.buffers())
        noise = np.asarray(self.noise_levels, dtype="float32")
        state = (self.inference_dtype, str(self.device), tuple((t.data_ptr(), t._version) for t in tensors),
                 noise.tobytes())
        if self._folded is None or self._folded[0] != state:
            self.network.eval()
            gain = torch.from_numpy(1.0 / noise).to(self.device)  # normalisation folded into the first scale
            self._folded = (state, FoldedNetwork(self.network, self.inference_dtype, input_gain=gain))
        return self._folded[1]

    @torch.no_grad()
    def probabilities(self, traces: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Firing probabilities (units, points) of a block of preprocessed traces (samples, channels); point i
        is centred on block sample i * stride + network.window_center (every sample when stride is 1)."""
        return torch.sigmoid(self.folded_network()(traces.T, stride))  # normalised inside (input_gain)

    @torch.no_grad()
    def spikes(
        self, probabilities: torch.Tensor, thresholds: np.ndarray | torch.Tensor | None = None, stride: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-process the ``probabilities`` of a block (from ``probabilities(traces, stride)``).

        Returns, per spike: unit index, block sample of its grid point (the local maximum), block sample
        refined between grid points by parabolic interpolation (equal when stride is 1), and smoothed
        probability. Spikes are complete for grid points in ``[margin_before, samples - margin_after)``.
        """
        if thresholds is None:
            thresholds = self.thresholds
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=probabilities.device)
        kernel = self._kernel if stride == 1 else triangular_kernel(strided_taps(self.smoothing_taps, stride))
        units, points, offsets, values = detect_spikes(probabilities, kernel, thresholds)
        centre = self.network.window_center
        grid = points * stride + centre
        refined = torch.round((points + offsets) * stride).long() + centre if stride > 1 else grid
        return units, grid, refined, values

    # persistence -------------------------------------------------------------------------
    def card(self) -> dict:
        """JSON description of the model (everything but the weights)."""
        local = self.network.spatial_radius_um is not None  # a dense network's model reads with format-1 readers
        return dict(
            format_version=MODEL_FORMAT_VERSION if local else 1,
            network=self.network.config(),
            sampling_frequency=self.sampling_frequency,
            channel_ids=self.channel_ids.tolist(),
            channel_locations=self.channel_locations.tolist(),
            noise_levels=self.noise_levels.tolist(),
            unit_ids=self.unit_ids.tolist(),
            smoothing_taps=self.smoothing_taps,
            thresholds=self.thresholds.tolist(),
            preprocessing=self.preprocessing,
            validation=self.validation,
            params=self.params,
        )

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in self.network.state_dict().items()}, folder / "weights.pt")
        (folder / "model.json").write_text(json.dumps(self.card(), indent=2), encoding="utf8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ESortModel":
        """Load a model from its folder (``model.json`` + ``weights.pt``), or from the ``run_sorter`` folder
        (or its ``sorter_output``) of an esort run."""
        folder = find_model_folder(folder)
        card_file, weights_file = folder / "model.json", folder / "weights.pt"
        if not card_file.is_file() or not weights_file.is_file():
            raise ValueError(
                f"{folder} is not an esort model folder (model.json + weights.pt) nor an esort sorter folder holding one."
            )
        card = json.loads(card_file.read_text(encoding="utf8"))
        if card.get("format_version", 0) > MODEL_FORMAT_VERSION:
            raise ValueError(
                f"{folder} holds an esort model of format {card['format_version']}; this version of "
                f"spikeinterface-esort reads format {MODEL_FORMAT_VERSION} or older: upgrade it."
            )
        network = ESortNetwork(**card["network"])
        network.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        model = cls(
            network=network,
            sampling_frequency=card["sampling_frequency"],
            channel_ids=np.asarray(card["channel_ids"]),
            channel_locations=np.asarray(card["channel_locations"]),
            noise_levels=np.asarray(card["noise_levels"]),
            unit_ids=np.asarray(card["unit_ids"]),
            smoothing_taps=card["smoothing_taps"],
            thresholds=np.asarray(card["thresholds"]),
            preprocessing=card["preprocessing"],
            validation=card["validation"],
            params=card.get("params", {}),
        )
        return model.to(device)

    # reuse on other recordings ------------------------------------------------------------
    def check_recording(self, recording) -> None:
        """Raise ``ValueError`` when ``recording`` does not fit the model: other sampling rate, channel
        count or channel layout (contact positions, up to a translation of the whole probe)."""
        from .transfer import same_layout

        fs = recording.get_sampling_frequency()
        if abs(fs - self.sampling_frequency) > 1e-6 * self.sampling_frequency:
            raise ValueError(
                f"This esort model was trained at {self.sampling_frequency:g} Hz; the recording is sampled at {fs:g} Hz. "
                "Resample the recording (spikeinterface.preprocessing.resample) or train a new model."
            )
        if recording.get_num_channels() != len(self.channel_ids):
            raise ValueError(
                f"This esort model reads {len(self.channel_ids)} channels; the recording has "
                f"{recording.get_num_channels()}. Select the model's channels (recording.select_channels) or train a new model."
            )
        if not recording.has_channel_location():
            raise ValueError("The recording has no channel locations (attach its probe): the model cannot check its layout.")
        if not same_layout(recording.get_channel_locations(), self.channel_locations):
            raise ValueError(
                "The recording's channel layout differs from the one this esort model was trained on (contact "
                "positions or their order); reorder its channels to the model's channel_locations or train a new model."
            )

    def sort(self, recording, folder: str | Path | None = None, job_kwargs: dict | None = None, stride: int | None = None,
             verbose: bool = False, inference_dtype: str | None = None):
        """Sort another recording of the same probe (e.g. a later session of a chronic implant) with this model,
        without new annotations: same preprocessing, noise normalisation, units and thresholds. Returns a
        ``NumpySorting`` with the esort unit properties; with ``folder``, also saves it and the spike
        probabilities there. ``stride`` and ``inference_dtype`` default to the ``inference_stride`` and
        ``inference_dtype`` the model was trained with."""
        from .pipeline import sort_with_model

        return sort_with_model(self, recording, folder=folder, job_kwargs=job_kwargs, stride=stride, verbose=verbose,
                               inference_dtype=inference_dtype)

    def fine_tune(self, recording, annotations, folder: str | Path | None = None, verbose: bool = False,
                  **params) -> "ESortModel":
        """A new model for ``recording`` (same probe and sampling rate), trained on ``annotations`` (a sorting in
        the recording's time base, or the folder of one) starting from this model's backbone, with a new head
        sized to the annotations' units. ``params`` override the sorter parameters this model was trained with
        (e.g. ``train_duration_s``, ``annotated_spikes_per_unit``, ``epochs``, ``learning_rate``, ``freeze_layers``,
        ``seed``). This model is left unchanged; thresholds are chosen as in ``run_sorter``."""
        from .pipeline import fine_tune_model

        return fine_tune_model(self, recording, annotations, folder=folder, verbose=verbose, **params)
