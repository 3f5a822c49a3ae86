"""Post-processing: probabilities to spikes, as tensor operations (CPU or GPU).

Per unit, as published: smooth the probability trace with a triangular kernel, then
a spike is a local maximum of the smoothed trace at or above the unit's threshold.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smoothing_taps(smoothing_ms: float, sampling_frequency: float) -> int:
    """Odd number of taps of the triangular kernel spanning ``smoothing_ms`` (17 taps for 0.53 ms at 32 kHz)."""
    return 2 * int(round(smoothing_ms * sampling_frequency / 1000.0 / 2.0)) + 1


def triangular_kernel(taps: int) -> torch.Tensor:
    """Triangular kernel of ``taps`` (odd) non-zero weights summing to 1, e.g. [1, 2, 1] / 4."""
    half = taps // 2
    weights = (half + 1 - np.abs(np.arange(-half, half + 1))).astype("float32")
    return torch.from_numpy(weights / weights.sum())


def smooth(probabilities: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each row of (units, samples) with ``kernel``; 'valid' mode: samples - taps + 1 outputs."""
    taps = kernel.numel()
    if taps == 1:
        return probabilities
    if probabilities.device.type != "cpu":
        weight = kernel.to(probabilities).reshape(1, 1, -1)
        return F.conv1d(probabilities.unsqueeze(1), weight).squeeze(1)
    # on CPU a one-channel convolution is slow (about 20x slower than this): a weighted sum of shifted rows
    weights = kernel.tolist()
    width = probabilities.shape[1] - taps + 1
    out = probabilities[:, :width] * weights[0]
    for tap in range(1, taps):
        out.add_(probabilities[:, tap : tap + width], alpha=weights[tap])
    return out


def local_maxima(smoothed: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima of each row of (units, samples) at or above the row's threshold.

    A maximum is strictly above its left neighbour and at least its right neighbour, so a
    plateau gives one spike. The first and last samples have no two neighbours and are never
    maxima. Returns (unit indices, sample indices into ``smoothed``, smoothed values), ordered
    by unit then sample.
    """
    centre = smoothed[:, 1:-1]
    is_peak = (centre > smoothed[:, :-2]) & (centre >= smoothed[:, 2:]) & (centre >= thresholds.to(centre)[:, None])
    units, samples = torch.nonzero(is_peak, as_tuple=True)
    return units, samples + 1, centre[units, samples]


def detection_margin(taps: int) -> int:
    """Extra probability samples needed on each side of a block to detect spikes exactly in it."""
    return taps // 2 + 1


def strided_taps(taps: int, stride: int) -> int:
    """Taps of the triangular kernel of the same width in time on a grid of one sample in ``stride``."""
    return 2 * int(round((taps // 2) / stride)) + 1


def detect_spikes(
    probabilities: torch.Tensor, kernel: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spikes in (units, points) probabilities: smoothed local maxima at or above each unit's threshold.

    Returns (unit indices, point indices into ``probabilities``, sub-point offsets in [-0.5, 0.5] from a
    parabola through the maximum and its neighbours, smoothed probabilities). Only points
    ``[taps // 2 + 1, points - taps // 2 - 1)`` can hold a spike (see ``detection_margin``).
    """
    smoothed = smooth(probabilities, kernel.to(probabilities.device))
    units, points, values = local_maxima(smoothed, thresholds)
    before, after = smoothed[units, points - 1], smoothed[units, points + 1]
    curvature = before - 2 * values + after
    offsets = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp(max=-1e-12), torch.zeros_like(values))
    return units, points + kernel.numel() // 2, offsets.clamp(-0.5, 0.5), values
