"""``ESortModel``: a trained E-Sort network and everything needed to apply it.

The model keeps the network, the recording properties it was trained for (sampling
rate, channel ids and locations, per-channel noise levels used to normalise traces),
the unit ids of its head, and the per-unit detection thresholds chosen on annotated
data. It saves as ``weights.pt`` (a ``state_dict``, loaded with ``weights_only=True``)
plus ``model.json`` (no pickled code).

Below the class, the steps that make and apply a model, one call each: ``fit_model`` (train the
network, choose thresholds), ``sort_with_model`` (``ESortModel.sort``) and ``fine_tune_model``
(``ESortModel.fine_tune``). ``pipeline.run_esort`` calls ``fit_model``; nothing here imports the
pipeline.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
from spikeinterface.core import BaseRecording, BaseSorting, NumpySorting

from .annotation import (
    Annotations,
    TrainingWindow,
    check_sorting_matches,
    checked_annotations,
    load_annotation_sorting,
    sorting_to_annotations,
    training_window,
)
from .device import resolve_device, resolve_dtype, resolve_precision, torch_threads
from .inference import detect_in_recording
from .jobs import StepTimer, chunk_size_from_job_kwargs, optional_file_log, resolve_job_kwargs
from .network import ESortNetwork, FoldedNetwork, network_window_samples
from .output import check_spike_counts, make_sorting, mean_probabilities, save_sorting
from .parameters import PARAMETERS_BY_NAME, default_params, validate_params
from .postprocessing import detect_spikes, detection_margin, smoothing_taps, strided_taps, triangular_kernel
from .preprocessing import correct_motion, preprocess
from .training import TrainingSplit, first_spikes_per_unit, fit_network, load_traces, split_window
from .transfer import Backbone, find_model_folder, model_backbone, resolve_backbone, same_layout
from .validation import choose_few_shot_thresholds, choose_thresholds

logger = logging.getLogger("spikeinterface_esort")

MODEL_FORMAT_VERSION = 2  # 2: the network may have a local spatial filter (spatial_radius_um); 1 otherwise


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
        return sort_with_model(self, recording, folder=folder, job_kwargs=job_kwargs, stride=stride, verbose=verbose,
                               inference_dtype=inference_dtype)

    def fine_tune(self, recording, annotations, folder: str | Path | None = None, verbose: bool = False,
                  **params) -> "ESortModel":
        """A new model for ``recording`` (same probe and sampling rate), trained on ``annotations`` (a sorting in
        the recording's time base, or the folder of one) starting from this model's backbone, with a new head
        sized to the annotations' units. ``params`` override the sorter parameters this model was trained with
        (e.g. ``train_duration_s``, ``annotated_spikes_per_unit``, ``epochs``, ``learning_rate``, ``freeze_layers``,
        ``seed``). This model is left unchanged; thresholds are chosen as in ``run_sorter``."""
        return fine_tune_model(self, recording, annotations, folder=folder, verbose=verbose, **params)


# training, sorting and fine-tuning: what ESortModel.sort and .fine_tune run, and run_esort trains with ---------

MODEL_PARAMS_EXCLUDED = ("job_kwargs", "annotation_sorting_path", "annotation_sorter_params")


def fit_model(
    preprocessed: BaseRecording,
    annotations: Annotations,
    window: TrainingWindow,
    noise_levels: np.ndarray,
    params: dict,
    device,
    chunk_size: int,
    progress_bar: bool,
    n_jobs: int,
    timer: "StepTimer | None" = None,
    backbone: Backbone | None = None,
    window_traces: torch.Tensor | None = None,
) -> tuple[ESortModel, TrainingSplit]:
    """Train a network on the annotated training window of a preprocessed recording (from
    ``backbone``, else from ``pretrained_weights`` when given) and choose its thresholds on the held-out part:
    the model and the split (in the window's training-recording frames, like ``annotations``). ``n_jobs``:
    threads reading the training traces. ``window_traces``: the window's traces already read (``load_traces`` of
    the window's training recording with these noise levels), else they are read here."""
    timer = timer or StepTimer()
    requested, params = params, resolve_precision(params, device)
    for name in ("training_dtype", "inference_dtype"):
        if params[name] != requested[name]:
            logger.info("%s: %s -> %s on %s", name, requested[name], params[name], device)
    fs = preprocessed.get_sampling_frequency()
    locations = preprocessed.get_channel_locations()
    split = split_window(window)
    training_recording = window.training_recording(preprocessed)
    with timer("training"):
        if backbone is None:
            backbone = resolve_backbone(params["pretrained_weights"], locations, fs)
        traces = window_traces
        if traces is None:
            traces = load_traces(
                training_recording, 0, window.num_samples, noise_levels, chunk_size=chunk_size,
                progress_bar=progress_bar, n_jobs=n_jobs,
            )
        jitter = int(round(params["jitter_ms"] * fs / 1000.0))
        network, history = fit_network(
            traces, annotations, split, network_window_samples(params["window_ms"], fs), jitter, params, device,
            progress_bar, channel_locations=locations, backbone=backbone, sampling_frequency=fs,
        )
        del traces
        model = ESortModel(
            network, fs, preprocessed.channel_ids, locations, noise_levels, annotations.unit_ids,
            smoothing_taps(params["smoothing_ms"], fs),
            preprocessing={
                k: params[k]
                for k in ("apply_preprocessing", "freq_min", "freq_max", "common_reference", "filter_method", "motion_correction")
            },
            params={k: v for k, v in params.items() if k not in MODEL_PARAMS_EXCLUDED},
        )
    with timer("validation"):
        k = params["annotated_spikes_per_unit"]
        if k is not None and params["detection_threshold"] == "auto":
            logger.info("validation: few-shot training holds no annotation out; thresholds at the valley of each "
                        "unit's probabilities on the training window")
            shots = first_spikes_per_unit(annotations, split.split, k)
            validation = choose_few_shot_thresholds(
                model, training_recording, annotations, shots, (split.start, split.split), params, chunk_size,
                progress_bar,
            )
        else:
            validation = choose_thresholds(
                model, training_recording, annotations, (split.split, split.stop), params, chunk_size, progress_bar
            )
        parts = [[int(a), int(b)] for a, b in window.validation_parts()]  # frames of segment 0, not of the window
        validation["frame_ranges"] = parts
        validation["frame_range"] = parts[0] if len(parts) == 1 else None
        validation["training_history"] = history
        model.validation = validation
    return model, split


def _preprocess_like_model(model: ESortModel, recording: BaseRecording, folder: Path | None, job_kwargs: dict,
                           progress_bar: bool) -> BaseRecording:
    """The preprocessing the model was trained with, applied to another recording of the same probe."""
    preprocessed = preprocess(recording, model.preprocessing)
    if model.preprocessing.get("motion_correction") is not None:
        import tempfile

        motion_folder = Path(folder) / "motion" if folder is not None else Path(tempfile.mkdtemp(prefix="esort_motion_"))
        preprocessed = correct_motion(
            preprocessed, model.preprocessing["motion_correction"], motion_folder, dict(job_kwargs, progress_bar=progress_bar)
        )
    return preprocessed


def sort_with_model(
    model: ESortModel,
    recording: BaseRecording,
    folder: str | Path | None = None,
    job_kwargs: dict | None = None,
    stride: int | None = None,
    verbose: bool = False,
    inference_dtype: str | None = None,
) -> NumpySorting:
    """Sort ``recording`` with a trained model (see ``ESortModel.sort``)."""
    model.check_recording(recording)
    if inference_dtype is not None:  # a copy of the model's parameters: the model itself is left as it was
        PARAMETERS_BY_NAME["inference_dtype"].check(inference_dtype)
        inference_dtype = resolve_dtype("inference_dtype", inference_dtype, model.device)
        model = copy.copy(model)
        model.params = dict(model.params, inference_dtype=inference_dtype)  # the folded network follows it
    folder = None if folder is None else Path(folder)
    job_kwargs = resolve_job_kwargs(job_kwargs or {})
    progress_bar = bool(job_kwargs.get("progress_bar", True)) and verbose
    stride = int(stride or model.params.get("inference_stride", 1))
    with optional_file_log(folder), torch_threads(job_kwargs["n_jobs"]):
        logger.info("sort with a saved model: %d units, %d channels, stride %d", len(model.unit_ids),
                    recording.get_num_channels(), stride)
        preprocessed = _preprocess_like_model(model, recording, folder, job_kwargs, progress_bar)
        chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
        detected = detect_in_recording(model, preprocessed, chunk_size, progress_bar, stride=stride)
        sorting = make_sorting(detected, model.unit_ids, model.sampling_frequency, recording.get_num_segments())
        sorting.set_property("esort_mean_probability", mean_probabilities(detected, len(model.unit_ids)))
        sorting.set_property("esort_threshold", model.thresholds.astype("float32"))
        logger.info("sorting: %d spikes of %d units", len(detected.sample_index), len(model.unit_ids))
        check_spike_counts(detected, model.unit_ids, model.thresholds, all_silent_is_error=False)
        if folder is not None:
            np.save(folder / "spike_probabilities.npy", detected.probability)
            save_sorting(sorting, folder / "sorting")
    return sorting


def fine_tune_model(
    model: ESortModel,
    recording: BaseRecording,
    annotations,
    folder: str | Path | None = None,
    verbose: bool = False,
    **overrides,
) -> ESortModel:
    """Train a new model on ``annotations`` of ``recording`` from ``model``'s backbone (see ``ESortModel.fine_tune``)."""
    params = default_params()
    # the model's own training settings, except how to freeze layers: that belongs to this fine-tuning
    params.update({k: v for k, v in model.params.items() if k in PARAMETERS_BY_NAME and k != "freeze_layers"})
    params.update(overrides)
    validate_params(params)
    model.check_recording(recording)
    sorting = annotations if isinstance(annotations, BaseSorting) else load_annotation_sorting(annotations)
    source = "the fine-tuning annotations" if isinstance(annotations, BaseSorting) else f"sorting folder {annotations}"
    check_sorting_matches(sorting, recording, source)
    window = training_window(recording, params)
    folder = None if folder is None else Path(folder)
    job_kwargs = resolve_job_kwargs(params["job_kwargs"])
    progress_bar = bool(job_kwargs.get("progress_bar", True)) and verbose
    with optional_file_log(folder), torch_threads(job_kwargs["n_jobs"]):
        found = checked_annotations(sorting_to_annotations(sorting, window, source), window, params)
        preprocessed = _preprocess_like_model(model, recording, folder, job_kwargs, progress_bar)
        chunk_size = chunk_size_from_job_kwargs(preprocessed, job_kwargs)
        backbone = model_backbone(model)
        params["window_ms"] = model.window_samples * 1000.0 / model.sampling_frequency
        tuned, _ = fit_model(
            preprocessed, found, window, model.noise_levels, params, resolve_device(params["torch_device"]),
            chunk_size, progress_bar, n_jobs=job_kwargs["n_jobs"], backbone=backbone,
        )
        tuned.preprocessing = dict(model.preprocessing)
        if folder is not None:
            tuned.save(folder / "model")
    return tuned
