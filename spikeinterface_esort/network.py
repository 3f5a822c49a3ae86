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

    def forward_windows(self, windows: torch.Tensor, channel_mixing: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, units) of single windows (window_samples, batch, channels), as ``gather_windows`` reads them
        from (samples, channels) traces: ``forward(windows.permute(1, 2, 0))[:, :, 0]`` written as matrix products
        (the training form). Every layer works on (features x batch, channels) rows: the first filter is one product
        with no transposed copy of the windows, the batch norms run on 2-D views (statistics per channel over
        features x batch, as the convolutional form's), the spatial filter is one product.

        ``channel_mixing`` (channels, channels), if given, re-samples the channels first: the network sees input
        channel c = sum_s channel_mixing[s, c] * channel s (the drift augmentation). It is applied after the first
        temporal filter (linear and shared by all channels, so it commutes with the mixing): on f1 features instead
        of window_samples samples per channel, window_samples / f1 times fewer operations than on the raw windows.
        """
        samples, batch, channels = windows.shape
        if channels != self.num_channels or samples != self.window_samples:
            raise ValueError(
                f"forward_windows expects windows of {self.window_samples} samples x {self.num_channels} channels, "
                f"got {samples} x {channels}."
            )
        f1, f2 = self.temporal_features
        x = self.temporal1.weight[:, 0, :] @ windows.reshape(samples, batch * channels)  # (f1, B*C)
        if channel_mixing is not None:  # one (f1*B, C) x (C, C) product
            x = x.reshape(f1 * batch, channels) @ channel_mixing.to(x.dtype)
        x = x.reshape(f1, batch, channels) + self.temporal1.bias[:, None, None]
        x = torch.relu(self.temporal1_norm(x.reshape(f1 * batch, channels, 1, 1)))
        x = torch.addmm(self.temporal2.bias[:, None], self.temporal2.weight[:, :, 0], x.reshape(f1, batch * channels))
        x = torch.relu(self.temporal2_norm(x.reshape(f2 * batch, channels, 1, 1)))  # (f2*B, C)
        # the spatial filter reads channel-major features (index c * f2 + g): its weight is re-ordered to (g, c)
        x = x.reshape(f2, batch, channels).transpose(0, 1).reshape(batch, f2 * channels)
        weight = self.spatial.weight[:, :, 0].reshape(-1, channels, f2).transpose(1, 2).reshape(-1, f2 * channels)
        x = torch.relu(self.spatial_norm(F.linear(x, weight, self.spatial.bias)))
        return F.linear(x, self.head.weight[:, :, 0], self.head.bias)

    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable."""
        return dict(
            num_channels=self.num_channels,
            window_samples=self.window_samples,
            num_units=self.num_units,
            temporal_features=list(self.temporal_features),
            hidden_size=self.hidden_size,
        )


# inference: the same network with its batch norms folded into the weights -----------------------

class FoldedNetwork:
    """An ``ESortNetwork`` in eval mode with every BatchNorm folded into the layer before it, for inference.

    The temporal batch norms scale and shift each electrode channel: the first scale multiplies the input
    channel (``input_scale``), the shifts become per-channel biases, the second scale per-channel temporal-2
    weights. The spatial batch norm folds into the spatial weights. The result equals ``network.eval()``'s
    logits up to float rounding, without the BatchNorm passes over the (channels x 16 x samples) features,
    and is evaluated in blocks of windows so those features stay small (about 16 MB at float32).
    ``input_gain`` (channels,), if given, multiplies each input channel first (the model's 1 / noise level, so that
    normalising the traces costs no pass of its own). Traces may be given in any memory layout (a transposed
    view of (samples, channels) traces is read in the same pass).
    ``dtype`` is the precision of every layer (the normalised input included; logits are returned as float32):
    float32 (exact), bfloat16 (CPUs with AVX-512 BF16 or AMX, GPUs) or float16 (GPUs).
    """

    CAST_SLICE_SAMPLES = 1024

    def __init__(self, network: "ESortNetwork", dtype: str = "float32", input_gain: torch.Tensor | None = None):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"FoldedNetwork computes in float32, bfloat16 or float16, got {dtype!r}")
        self.window_samples = network.window_samples
        self.dtype = getattr(torch, dtype)
        with torch.no_grad():
            a1, d1 = _batch_norm_affine(network.temporal1_norm)  # (C,)
            a2, d2 = _batch_norm_affine(network.temporal2_norm)
            a3, d3 = _batch_norm_affine(network.spatial_norm)  # (H,)
            f1, f2 = network.temporal_features
            dt = self.dtype
            gain = torch.ones_like(a1) if input_gain is None else torch.as_tensor(input_gain).to(a1)
            self.input_scale = a1 * gain  # multiplies input channel c before the shared temporal filter
            self.temporal1_weight = network.temporal1.weight.detach().to(dt).contiguous()  # (f1, 1, T)
            self.temporal1_bias = (a1[:, None] * network.temporal1.bias[None, :] + d1[:, None])[..., None].to(dt)  # (C, f1, 1)
            w2 = network.temporal2.weight.detach()[:, :, 0]  # (f2, f1)
            self.temporal2_weight = (a2[:, None, None] * w2[None]).to(dt).contiguous()  # (C, f2, f1)
            self.temporal2_bias = (a2[:, None] * network.temporal2.bias[None, :] + d2[:, None])[..., None].to(dt)
            ws = network.spatial.weight.detach()[:, :, 0]  # (H, C*f2)
            self.spatial_weight = (a3[:, None] * ws).to(dt).contiguous()
            self.spatial_bias = (a3 * network.spatial.bias + d3)[:, None].to(dt)
            self.head_weight = network.head.weight.detach()[:, :, 0].to(dt).contiguous()
            self.head_bias = network.head.bias.detach()[:, None].to(dt)
        self.num_features = self.spatial_weight.shape[1]

    def block_windows(self, device: torch.device) -> int:
        """Windows per block: (channels x 16 features x block) about 4 M values on CPU; 64 k windows on GPU."""
        if device.type != "cpu":
            return 65536
        return int(min(8192, max(256, (1 << 22) // self.num_features)))

    @torch.no_grad()
    def __call__(self, traces: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Logits (units, windows) of normalised traces (channels, samples), for the windows starting at samples
        0, stride, 2 * stride, ... (as ``ESortNetwork.forward`` for one trace)."""
        channels, samples = traces.shape
        if samples < self.window_samples:
            raise ValueError(f"ESortNetwork needs at least {self.window_samples} samples, got {samples}.")
        x = torch.empty((channels, samples), dtype=self.dtype, device=traces.device)
        # scaled, cast and made contiguous in one pass, in slices of samples: a transposed input is then
        # read in cache-sized tiles (on CPU, much faster than one pass over the whole chunk)
        step = samples if traces.device.type != "cpu" else self.CAST_SLICE_SAMPLES
        for first in range(0, samples, step):
            torch.mul(traces[:, first : first + step], self.input_scale[:, None], out=x[:, first : first + step])
        x = x.unsqueeze(1)  # (C, 1, L)
        windows = (samples - self.window_samples) // stride + 1
        block = self.block_windows(traces.device)
        out = []
        for first in range(0, windows, block):
            count = min(block, windows - first)
            start = first * stride
            part = x[..., start : start + (count - 1) * stride + self.window_samples]
            y = torch.relu_(F.conv1d(part, self.temporal1_weight, stride=stride) + self.temporal1_bias)  # (C, f1, n)
            y = torch.relu_(torch.baddbmm(self.temporal2_bias, self.temporal2_weight, y))  # (C, f2, n)
            y = y.reshape(channels * y.shape[1], count)
            h = torch.relu_(torch.addmm(self.spatial_bias, self.spatial_weight, y))  # (H, n)
            out.append(torch.addmm(self.head_bias, self.head_weight, h).float())
        return torch.cat(out, dim=1)


def _batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a BatchNorm in eval mode: y = scale * x + shift, per channel."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale.detach(), (norm.bias - scale * norm.running_mean).detach()
