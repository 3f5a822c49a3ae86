"""The E-Sort network, in convolutional form.

As published (Han & Wang 2024), for a window of T samples x C channels centred on
the sample being classified:

1. temporal filter 1: Linear(T -> 8), shared by all channels, BatchNorm over channels, ReLU;
2. temporal filter 2: Linear(8 -> 16), shared by all channels, BatchNorm over channels, ReLU;
3. spatial filter: flatten to C*16, Linear(C*16 -> 256), BatchNorm, ReLU;
4. head: Linear(256 -> N units); a sigmoid gives one independent firing probability per unit.

Sliding that window one sample at a time is the same as a 1-D convolution of
kernel T (step 1) followed by 1x1 convolutions (steps 2-4). ``ESortNetwork`` is
written that way, so one forward pass over a chunk of L >= T samples yields the
logits of the L - T + 1 windows it contains; a batch of single windows (L = T) is
the special case used in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


MIN_WINDOW_SAMPLES = 4


def network_window_samples(window_ms: float, sampling_frequency: float) -> int:
    """Window length in samples for ``window_ms`` at ``sampling_frequency`` Hz; refuses windows too short."""
    samples = int(round(window_ms * sampling_frequency / 1000.0))
    if samples < MIN_WINDOW_SAMPLES:
        raise ValueError(
            f"esort parameter 'window_ms'={window_ms} gives {samples} samples at {sampling_frequency:g} Hz; the "
            f"network needs at least {MIN_WINDOW_SAMPLES}: raise window_ms or record at a higher sampling rate."
        )
    return samples


class ESortNetwork(nn.Module):
    """E-Sort network for ``num_channels`` channels, a window of ``window_samples`` samples
    and ``num_units`` units.

    ``forward`` takes traces of shape (batch, channels, samples) and returns logits of shape
    (batch, units, samples - window_samples + 1); output index i is the window whose first
    sample is input index i, i.e. centred on input sample i + ``window_center``.
    """

    def __init__(
        self,
        num_channels: int,
        window_samples: int,
        num_units: int,
        temporal_features: tuple[int, int] = (8, 16),
        hidden_size: int = 256,
    ):
        super().__init__()
        if num_channels < 1 or window_samples < 2 or num_units < 1:
            raise ValueError(
                f"ESortNetwork needs at least 1 channel, 2 window samples and 1 unit; got "
                f"{num_channels} channels, {window_samples} samples, {num_units} units."
            )
        self.num_channels = int(num_channels)
        self.window_samples = int(window_samples)
        self.num_units = int(num_units)
        self.temporal_features = tuple(int(f) for f in temporal_features)
        self.hidden_size = int(hidden_size)
        f1, f2 = self.temporal_features

        self.temporal1 = nn.Conv1d(1, f1, kernel_size=self.window_samples)
        self.temporal1_norm = nn.BatchNorm2d(self.num_channels)
        self.temporal2 = nn.Conv1d(f1, f2, kernel_size=1)
        self.temporal2_norm = nn.BatchNorm2d(self.num_channels)
        self.spatial = nn.Conv1d(self.num_channels * f2, self.hidden_size, kernel_size=1)
        self.spatial_norm = nn.BatchNorm1d(self.hidden_size)
        self.head = nn.Conv1d(self.hidden_size, self.num_units, kernel_size=1)

    @property
    def window_center(self) -> int:
        """Offset, in samples, of the classified sample from the window's first sample."""
        return self.window_samples // 2

    def backbone(self, traces: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Features (batch, hidden_size, windows) of traces (batch, channels, samples) for the windows starting
        at samples 0, stride, 2 * stride, ... (every window when stride is 1)."""
        batch, channels, samples = traces.shape
        if channels != self.num_channels:
            raise ValueError(f"ESortNetwork expects {self.num_channels} channels, got {channels}.")
        if samples < self.window_samples:
            raise ValueError(f"ESortNetwork needs at least {self.window_samples} samples, got {samples}.")
        x = F.conv1d(traces.reshape(batch * channels, 1, samples), self.temporal1.weight, self.temporal1.bias, stride=stride)
        length = x.shape[-1]
        x = torch.relu(self.temporal1_norm(x.reshape(batch, channels, -1, length)))
        x = self.temporal2(x.reshape(batch * channels, -1, length))  # (B*C, f2, L')
        x = torch.relu(self.temporal2_norm(x.reshape(batch, channels, -1, length)))
        x = self.spatial(x.reshape(batch, -1, length))  # channel-major flatten: C*f2
        return torch.relu(self.spatial_norm(x))

    def forward(self, traces: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Logits (batch, units, windows); see ``backbone`` for which windows."""
        return self.head(self.backbone(traces, stride))

    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable."""
        return dict(
            num_channels=self.num_channels,
            window_samples=self.window_samples,
            num_units=self.num_units,
            temporal_features=list(self.temporal_features),
            hidden_size=self.hidden_size,
        )
