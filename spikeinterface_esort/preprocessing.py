"""Preprocessing: bandpass filter and common median reference, through SpikeInterface.

The result is a lazy SpikeInterface recording in float32; traces are only read,
chunk by chunk, by training and inference.
"""

from __future__ import annotations

import numpy as np
import spikeinterface.preprocessing as spre
from spikeinterface.core import BaseRecording, get_noise_levels


def check_preprocessing_params(recording: BaseRecording, params: dict) -> None:
    """Raise ``ValueError`` when the band does not fit the recording's sampling rate."""
    if not params["apply_preprocessing"]:
        return
    nyquist = recording.get_sampling_frequency() / 2.0
    if params["freq_max"] >= nyquist:
        raise ValueError(
            f"esort parameter 'freq_max'={params['freq_max']} Hz must be below the Nyquist frequency of "
            f"this recording ({nyquist:g} Hz at {2 * nyquist:g} Hz sampling); lower freq_max."
        )
    if params["freq_min"] >= params["freq_max"]:
        raise ValueError(
            f"esort parameter 'freq_min'={params['freq_min']} Hz must be below freq_max={params['freq_max']} Hz."
        )


def preprocess(recording: BaseRecording, params: dict) -> BaseRecording:
    """Bandpass filter (freq_min-freq_max Hz) and, if asked, common median reference; float32."""
    if not params["apply_preprocessing"]:
        return spre.astype(recording, "float32") if recording.get_dtype() != np.float32 else recording
    check_preprocessing_params(recording, params)
    out = spre.bandpass_filter(recording, freq_min=params["freq_min"], freq_max=params["freq_max"], dtype="float32")
    if params["common_reference"] and recording.get_num_channels() > 1:
        out = spre.common_reference(out, reference="global", operator="median")
    return out


def correct_motion(recording: BaseRecording, preset: str, folder, job_kwargs: dict) -> BaseRecording:
    """SpikeInterface's motion estimation and interpolation with ``preset``; motion info saved in ``folder``.
    Every channel is kept (extrapolated at the borders) so that the channel layout does not change."""
    keys = ("n_jobs", "chunk_duration", "chunk_size", "chunk_memory", "total_memory", "progress_bar")
    return spre.correct_motion(
        recording, preset=preset, folder=folder, overwrite=True,
        interpolate_motion_kwargs=dict(border_mode="force_extrapolate"),
        **{k: job_kwargs[k] for k in keys if k in job_kwargs},
    )


def estimate_noise_levels(recording: BaseRecording, seed: int, progress_bar: bool = False, n_jobs: int = 1) -> np.ndarray:
    """Per-channel noise (MAD), in the recording's own units, from random chunks (read by ``n_jobs`` threads);
    floored to avoid dividing by zero on dead channels."""
    noise = get_noise_levels(
        recording, return_in_uV=False, random_slices_kwargs={"seed": seed}, force_recompute=True,
        progress_bar=progress_bar, n_jobs=max(1, int(n_jobs)), pool_engine="thread",
    )
    noise = np.asarray(noise, dtype="float32")
    positive = noise[noise > 0]
    floor = float(np.median(positive)) * 1e-3 if positive.size else 1.0
    return np.maximum(noise, floor)
