"""The table of E-Sort parameters.

Every sorter parameter is declared once, in ``PARAMETERS``, with its type, allowed
range or choices, default, the pipeline step it belongs to and its description.
The sorter's defaults, its ``_params_description``, the validation of user input
and the parameter table in ``docs/parameters.md`` are all derived from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INFERENCE_DTYPES = ("float32", "bfloat16", "float16", "auto")  # float16: CUDA only; auto: device.resolve_dtype
TRAINING_DTYPES = ("float32", "bfloat16", "auto")
FILTER_METHODS = ("fft", "sosfiltfilt")
FREEZE_CHOICES = ("auto", "none", "temporal", "backbone")  # resolved by transfer.resolve_freeze
HEAD_INIT_CHOICES = ("auto", "imprint", "random")  # resolved by transfer.imprints_head
# epochs='auto' (resolved by transfer.resolve_epochs): a head imprinted from a whole transferred backbone starts near its
# answer and needs half the epochs of a network whose head (or more) starts at random (docs/defaults.md)
AUTO_EPOCHS_IMPRINTED = 3
AUTO_EPOCHS = 6

STEPS = ("preprocessing", "annotation", "network", "training", "inference", "postprocessing", "general")


@dataclass(frozen=True)
class Parameter:
    """One sorter parameter.

    ``types`` are the accepted Python types (``None`` in the tuple means the value may
    be None); ``minimum``/``maximum`` bound numbers (inclusive unless ``exclusive``);
    ``choices`` restricts strings.
    """

    name: str
    default: Any
    types: tuple
    step: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False
    choices: tuple | None = None

    def type_names(self) -> str:
        return " or ".join("None" if t is None else t.__name__ for t in self.types)

    def range_text(self) -> str:
        parts = [] if self.choices is None else [", ".join(repr(c) for c in self.choices)]
        if self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
            hi = "inf" if self.maximum is None else f"{self.maximum:g}"
            brackets = "()" if self.exclusive else "[]"
            parts.append(f"{brackets[0]}{lo}, {hi}{brackets[1]}")
        return " or ".join(parts)

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming this parameter when ``value`` is not allowed."""
        if value is None:
            if None in self.types:
                return
            raise ValueError(f"esort parameter '{self.name}' must not be None (expected {self.type_names()}).")
        accepted = tuple(t for t in self.types if t is not None)
        # bool is a subclass of int: accept it only where bool is declared.
        if isinstance(value, bool) and bool not in accepted:
            ok = False
        elif float in accepted and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        else:
            ok = isinstance(value, accepted)
        if not ok:
            raise ValueError(
                f"esort parameter '{self.name}' must be {self.type_names()}, "
                f"got {type(value).__name__} {value!r}."
            )
        if isinstance(value, str) and self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"esort parameter '{self.name}' must be one of {', '.join(map(repr, self.choices))}, got {value!r}."
                )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"esort parameter '{self.name}' must be finite, got {value!r}.")
            too_low = self.minimum is not None and (
                value <= self.minimum if self.exclusive else value < self.minimum
            )
            too_high = self.maximum is not None and (
                value >= self.maximum if self.exclusive else value > self.maximum
            )
            if too_low or too_high:
                raise ValueError(f"esort parameter '{self.name}' must be in {self.range_text()}, got {value!r}.")


PARAMETERS: tuple[Parameter, ...] = (
    # preprocessing
    Parameter("apply_preprocessing", True, (bool,), "preprocessing",
              "Bandpass filter (and common reference) the recording before training and inference. "
              "Set False if the recording is already preprocessed."),
    Parameter("freq_min", 300.0, (float,), "preprocessing",
              "Bandpass low cut-off, in Hz.", minimum=0.0, exclusive=True),
    Parameter("freq_max", 6000.0, (float,), "preprocessing",
              "Bandpass high cut-off, in Hz; must be below the recording's Nyquist frequency.",
              minimum=0.0, exclusive=True),
    Parameter("common_reference", True, (bool,), "preprocessing",
              "Subtract the median across channels at each sample (global common median reference)."),
    Parameter("filter_method", "fft", (str,), "preprocessing",
              "How the bandpass is applied; both give the zero-phase order-5 Butterworth response of a "
              "forward-backward pass. 'fft': one FFT per chunk with 10 periods of freq_min as margin "
              "(cheaper on CPU; docs/speed.md); 'sosfiltfilt': SpikeInterface's bandpass_filter and "
              "common_reference.", choices=FILTER_METHODS),
    Parameter("motion_correction", None, (str, None), "preprocessing",
              "SpikeInterface correct_motion preset applied after filtering, before training and inference "
              "(all channels kept: border_mode 'force_extrapolate'), or None for no motion correction.",
              choices=("dredge_fast", "dredge", "nonrigid_fast_and_accurate", "nonrigid_accurate", "rigid_fast",
                       "kilosort_like", "medicine")),
    # annotation
    Parameter("annotation_sorting_path", None, (str, None), "annotation",
              "Folder of a saved SpikeInterface sorting (sorting.save(folder=...)) or of a run_sorter "
              "output, in the recording's time base: its spikes in the training window are the "
              "annotations (a curated sorting or ground truth). When given, it wins over annotation_sorter."),
    Parameter("annotation_sorter", "spykingcircus2", (str, list), "annotation",
              "SpikeInterface sorter run with run_sorter on the training window to annotate spikes "
              "when annotation_sorting_path is None; a list of sorters is a teacher ensemble: their units are "
              "matched, spikes that two or more claim are positives, spikes only one claims are left out of "
              "training (docs/real-data.md)."),
    Parameter("annotation_sorter_params", {}, (dict,), "annotation",
              "Parameters passed to run_sorter for annotation_sorter; with a list of sorters, a dict from sorter "
              "name to its parameters (a sorter not in it runs with its defaults). A sorter that takes job_kwargs "
              "(spykingcircus2, tridesclous2) gets esort's job_kwargs (n_jobs) unless they are given here."),
    Parameter("ensemble_unmatched_units", "keep", (str,), "annotation",
              "Teacher ensemble only: a unit that only one of the annotation sorters found is kept (all its "
              "spikes are positives) or dropped.", choices=("keep", "drop")),
    Parameter("train_start_s", 0.0, (float,), "annotation",
              "Start of the training window in the first segment, in s.", minimum=0.0),
    Parameter("train_duration_s", None, (float, None), "annotation",
              "Length of the training window, in s. None: the first half of the first segment, "
              "at most 60 s (docs/defaults.md).", minimum=0.0, exclusive=True),
    Parameter("train_pieces", None, (int, None), "annotation",
              "The training window is cut into this many equal pieces spread evenly from train_start_s to the end "
              "of the first segment (the teacher sorts them end to end), so that the network learns every unit "
              "wherever the probe has drifted. None: 12 when the first segment is at least 4 windows long, else 1 "
              "(docs/defaults.md).", minimum=1),
    Parameter("annotated_spikes_per_unit", None, (int, None), "annotation",
              "Few-shot training: only the first k annotated spikes of each unit in the training window are "
              "positives (negatives still avoid every annotated spike). With k set, no other annotation is used: "
              "no held-out validation (training runs all epochs) and thresholds are detection_threshold, or with "
              "'auto' each unit's at the gap between its weak and strong responses on the training window "
              "(docs/transfer-learning.md). None: every annotated spike.", minimum=1),
    Parameter("annotation_curation", "auto", (str, dict, None), "annotation",
              "Clean the annotated units with SpikeInterface's curation before training: a dict with any of "
              "'split_units' (dict, {} for the defaults: a unit whose waveforms form clusters of unlike shape is "
              "split, see annotation_curation.SPLIT_DEFAULTS), 'merge_presets' (list of auto-merge presets, e.g. "
              "['similarity_correlograms']), 'merge_steps_params' (their step parameters), 'unit_thresholds' "
              "(quality metric -> {'greater'/'less': value}; units that fail are removed) and 'remove_redundant' "
              "(bool). 'auto': a teacher sorter's units are split where they hold spikes of unlike waveforms, "
              "then removed when their SNR in the window is 3 or less "
              "(annotation_curation.TEACHER_CURATION; docs/real-data.md); a saved sorting (annotation_sorting_path: "
              "ground truth, a curated sorting) is used as given. None: no cleaning.", choices=("auto",)),
    Parameter("min_spikes_per_unit", 10, (int,), "annotation",
              "Annotated units with fewer spikes in the training window are dropped (the log lists them).",
              minimum=1),
    # network
    Parameter("window_ms", 2.0, (float,), "network",
              "Length of the window of traces the network reads around each sample, in ms "
              "(60 samples at 30 kHz).", minimum=0.1, maximum=20.0),
    Parameter("temporal_features", [8, 16], (list,), "network",
              "Output sizes of the two temporal filters shared by all channels."),
    Parameter("hidden_size", 256, (int,), "network",
              "Output size of the spatial filter (the last backbone layer).", minimum=1),
    Parameter("spatial_radius_um", 100.0, (float, None), "network",
              "Local spatial filter (not in the paper): the hidden features are split into groups of 16, each "
              "reading only the channels within this distance (um, along the probe) of its stretch of the probe; "
              "at 384 channels and 100 um each feature reads 43-62 of the 384 channels (docs/speed.md). None: every "
              "feature reads every channel, as published.", minimum=0.0, exclusive=True),
    # training
    Parameter("pretrained_weights", "auto", (str, None), "training",
              "Start from a pretrained backbone (transfer learning): 'auto' (the shipped backbone of the same "
              "probe layout and sampling rate, else the closest: its temporal filters transfer to any probe), a "
              "shipped name (see pretrained/), a path to a backbone .pt (with its .json card) or to an esort "
              "model / sorter output folder; None trains from scratch. The log lists what was transferred "
              "(docs/transfer-learning.md)."),
    Parameter("freeze_layers", "auto", (str,), "training",
              "Layers not updated while training from pretrained_weights: 'none', 'temporal' (the two "
              "temporal filters), 'backbone' (all but the new head) or 'auto' ('backbone' for few-shot training, "
              "annotated_spikes_per_unit set, when the whole backbone was transferred; else 'none'; "
              "docs/transfer-learning.md).", choices=FREEZE_CHOICES),
    Parameter("head_init", "auto", (str,), "training",
              "How the head (one output per unit, always new) starts: 'imprint' (each unit's weights from the mean "
              "backbone features of its annotated windows against the other windows'), 'random', or 'auto' "
              "('imprint' when the whole backbone was transferred from pretrained_weights, else 'random'; "
              "docs/transfer-learning.md).", choices=HEAD_INIT_CHOICES),
    Parameter("self_training_rounds", 0, (int,), "training",
              "Self-training: after training, the network sorts the training part of the window; its confident "
              "detections (at or above the unit's threshold, and >= 0.5) that the annotations miss become positives, annotated spikes it "
              "rejects are left out, and it is trained again, this many times (docs/real-data.md). Thresholds "
              "are still chosen on the held-out annotations. Not with annotated_spikes_per_unit.",
              minimum=0, maximum=3),
    Parameter("jitter_ms", 0.17, (float,), "training",
              "Windows centred within +-jitter_ms of an annotated spike are positives (5 samples at 30 kHz).",
              minimum=0.0),
    Parameter("windows_per_spike", 1, (int,), "training",
              "Positive windows drawn per annotated spike and epoch, each at a random offset within "
              "+-jitter_ms (the paper enumerates all 2*jitter+1 offsets every epoch).", minimum=1),
    Parameter("drift_augmentation_um", 20.0, (float,), "training",
              "Simulate probe drift while training: each batch is spatially re-sampled (kriging, as "
              "SpikeInterface's motion interpolation) at channel positions shifted along the probe by a random "
              "-d..+d um, d at most a quarter of the probe's depth extent. 0 disables it.", minimum=0.0, maximum=200.0),
    Parameter("spikes_per_epoch", 20000, (int, None), "training",
              "Annotated spikes drawn as positives in each epoch: a random subset where the training part holds more "
              "(another each epoch), else every spike as many times as fits (the rest drawn at random), so that an "
              "epoch is the same number of batches whatever the window's length and the firing rates; each epoch's "
              "validation loss is taken on a random quarter as many held-out spikes, drawn once (all of them where "
              "there are fewer). None: every annotated spike once per epoch and every held-out spike, as published.",
              minimum=1),
    Parameter("unit_balance", 1.0, (float,), "training",
              "How each epoch's positives are shared among units: each annotated spike is drawn with a probability "
              "proportional to n ** -unit_balance, n being its unit's spike count, so 0 shares them in proportion to "
              "the units' spike counts (as published) and 1 (the default) gives every unit the same share, a rare "
              "unit's spikes repeated at other jitter offsets (docs/defaults.md).", minimum=0.0, maximum=1.0),
    Parameter("negative_ratio", 1.0, (float,), "training",
              "Negative windows (no annotated spike within +-jitter_ms) per positive window.",
              minimum=0.0),
    Parameter("validation_fraction", 0.2, (float,), "training",
              "Fraction at the end of each piece of the training window held out for early stopping, threshold "
              "choice and the validation report.", minimum=0.0, maximum=0.9, exclusive=True),
    Parameter("epochs", "auto", (int, str), "training",
              "Maximum number of training epochs, each of spikes_per_epoch annotated spikes (the paper: 50 epochs "
              f"of every spike). 'auto': {AUTO_EPOCHS_IMPRINTED} when the head starts imprinted from a whole "
              "transferred backbone (pretrained_weights of the recording's probe layout) and the whole window is "
              f"annotated, else {AUTO_EPOCHS} (docs/defaults.md).", minimum=1, choices=("auto",)),
    Parameter("patience", 3, (int,), "training",
              "Stop when the validation loss has not improved for this many epochs.", minimum=1),
    Parameter("learning_rate", 0.005, (float,), "training", "Adam learning rate.",
              minimum=0.0, exclusive=True),
    Parameter("batch_size", 512, (int,), "training",
              "Windows per training batch (positives and negatives together). The published method uses 1024; 512 "
              "takes twice the optimiser steps per epoch, which learns more per second of training "
              "(docs/defaults.md).", minimum=1),
    Parameter("training_dtype", "auto", (str,), "training",
              "Precision of the network's matrix products during training: 'float32', 'bfloat16' (mixed "
              "precision with torch.autocast, weights and optimiser kept in float32; only where the device computes "
              "bfloat16 natively: CPUs with AVX-512 BF16 or AMX, GPUs of compute capability 8.0+; refused elsewhere, "
              "where it is emulated and about 100x slower), or 'auto' (bfloat16 where native, else float32; "
              "see docs/speed.md).",
              choices=TRAINING_DTYPES),
    # inference
    Parameter("torch_device", "auto", (str,), "inference",
              "Device for training and inference: 'auto' (CUDA when available, else CPU), 'cpu', "
              "'cuda' or 'cuda:N'."),
    Parameter("inference_stride", 2, (int,), "inference",
              "Run the network on one sample in inference_stride (1: every sample, the exact dense evaluation); "
              "spike times are refined between evaluated samples by parabolic interpolation. Thresholds are "
              "chosen with the same stride.", minimum=1, maximum=16),
    Parameter("inference_dtype", "auto", (str,), "inference",
              "Precision of the network at inference and threshold choice: 'float32' (exact), 'bfloat16' (only "
              "where native: CPUs with AVX-512 BF16 or AMX, GPUs of compute capability 8.0+), 'float16' (GPUs "
              "only) or 'auto' (bfloat16 where native, else float32; see docs/speed.md). Training: see "
              "training_dtype.",
              choices=INFERENCE_DTYPES),
    # postprocessing
    Parameter("smoothing_ms", 0.53, (float,), "postprocessing",
              "Width of the triangular kernel smoothing each unit's probability trace, in ms "
              "(17 taps at 32 kHz).", minimum=0.0),
    Parameter("detection_threshold", "auto", (str, float), "postprocessing",
              "Probability a smoothed local maximum must reach to be a spike. 'auto': chosen per unit "
              "to maximise accuracy on the held-out part of the training window (never on the data "
              "being sorted); a number in (0, 1) applies to every unit.", choices=("auto",),
              minimum=0.0, maximum=1.0, exclusive=True),
    Parameter("match_tolerance_ms", 0.4, (float,), "postprocessing",
              "Tolerance for matching a detection to an annotated spike when choosing thresholds "
              "and reporting validation scores, in ms (SpikeInterface's default delta_time).",
              minimum=0.0, exclusive=True),
    # general
    Parameter("seed", 0, (int,), "general",
              "Seed of every random draw: same recording, annotations, parameters and seed give the same sorting. "
              "A teacher sorter (annotation_sorter) is not held to it: spykingcircus2 gives different units from "
              "run to run on the same window (docs/long-recordings.md); to repeat a sort exactly, pass the labels "
              "it trained on (its sorter_output/training_annotations) as annotation_sorting_path.",
              minimum=0),
    Parameter("job_kwargs", {}, (dict,), "general",
              "n_jobs (CPU threads for torch and SpikeInterface steps; default all cores), "
              "chunk_duration or chunk_size or chunk_memory (chunks read for training and inference; default \"1s\"), "
              "progress_bar (default True; shown when run_sorter(..., verbose=True))."),
)

PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}

# The exact published path (Han & Wang 2024, as this implementation follows it): every feature reads every channel,
# float32 throughout, the network at every sample, from scratch, every annotated spike in every one of up to 30 epochs,
# in batches of 1024 windows.
# run_sorter("esort", recording, **PUBLISHED_PARAMS) takes it; docs/defaults.md compares it with the defaults.
PUBLISHED_PARAMS = dict(
    pretrained_weights=None, spatial_radius_um=None, training_dtype="float32", inference_dtype="float32",
    inference_stride=1, epochs=30, patience=5, batch_size=1024, spikes_per_epoch=None, unit_balance=0.0, annotation_curation=None,
)


def default_params() -> dict:
    """Default value of every parameter (fresh copies of mutable values)."""
    import copy

    return {p.name: copy.deepcopy(p.default) for p in PARAMETERS}


def params_description() -> dict:
    """Description of every parameter, as SpikeInterface's get_sorter_params_description shows it."""
    out = {}
    for p in PARAMETERS:
        text = f"{p.description} [{p.step}; {p.type_names()}"
        if p.range_text():
            text += f"; {p.range_text()}"
        out[p.name] = text + f"; default {p.default!r}]"
    return out


def validate_params(params: dict) -> dict:
    """Check every value against the table; raise ``ValueError`` naming the first bad parameter."""
    unknown = sorted(set(params) - set(PARAMETERS_BY_NAME))
    if unknown:
        raise ValueError(f"Unknown esort parameters: {unknown}. Valid parameters: {sorted(PARAMETERS_BY_NAME)}")
    for name, value in params.items():
        PARAMETERS_BY_NAME[name].check(value)
    tf = params.get("temporal_features")
    if tf is not None and (len(tf) != 2 or not all(isinstance(v, int) and v > 0 for v in tf)):
        raise ValueError(f"esort parameter 'temporal_features' must be two positive ints, got {tf!r}.")
    if params.get("self_training_rounds") and params.get("annotated_spikes_per_unit") is not None:
        raise ValueError("esort parameters 'self_training_rounds' and 'annotated_spikes_per_unit' cannot be used "
                         "together: self-training relabels a whole annotated window.")
    allowed_job_keys = {"n_jobs", "chunk_duration", "chunk_size", "chunk_memory", "total_memory",
                        "progress_bar", "pool_engine", "mp_context", "max_threads_per_worker"}
    bad = sorted(set(params.get("job_kwargs", {})) - allowed_job_keys)
    if bad:
        raise ValueError(f"esort parameter 'job_kwargs' has unknown keys {bad}; allowed: {sorted(allowed_job_keys)}")
    return params


def parameters_markdown() -> str:
    """The parameter table for docs/parameters.md."""
    lines = [
        "# E-Sort parameters",
        "",
        "Generated from `spikeinterface_esort/parameters.py` by "
        "`python -m spikeinterface_esort parameters > docs/parameters.md`.",
        "",
        "| step | parameter | type | range | default | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for step in STEPS:
        for p in PARAMETERS:
            if p.step == step:
                lines.append(
                    f"| {p.step} | `{p.name}` | {p.type_names()} | {p.range_text()} | `{p.default!r}` | {p.description} |"
                )
    return "\n".join(lines) + "\n"
