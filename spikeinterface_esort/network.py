"""The E-Sort network, in convolutional form.

As published (Han & Wang 2024), for a window of T samples x C channels centred on
the sample being classified:

1. temporal filter 1: Linear(T -> 8), shared by all channels, BatchNorm over channels, ReLU;
2. temporal filter 2: Linear(8 -> 16), shared by all channels, BatchNorm over channels, ReLU;
3. spatial filter: flatten to C*16, Linear(C*16 -> 256), BatchNorm, ReLU;
4. head: Linear(256 -> N units); a sigmoid gives one independent firing probability per unit.

With ``spatial_radius_um`` the spatial filter is local (not in the paper): the hidden features are split into
groups, each reading only the channels within that radius of its stretch of the probe (``spatial_neighbourhoods``),
so that at 384 channels it costs a fraction of the dense product; the mask is kept in the network's state.

Sliding that window one sample at a time is the same as a 1-D convolution of
kernel T (step 1) followed by 1x1 convolutions (steps 2-4). ``ESortNetwork`` is
written that way, so one forward pass over a chunk of L >= T samples yields the
logits of the L - T + 1 windows it contains; a batch of single windows (L = T) is
the special case used in training.
"""

from __future__ import annotations

import numpy as np
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
        spatial_radius_um: float | None = None,
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
        self.spatial_radius_um = None if spatial_radius_um is None else float(spatial_radius_um)
        f1, f2 = self.temporal_features

        self.temporal1 = nn.Conv1d(1, f1, kernel_size=self.window_samples)
        self.temporal1_norm = nn.BatchNorm2d(self.num_channels)
        self.temporal2 = nn.Conv1d(f1, f2, kernel_size=1)
        self.temporal2_norm = nn.BatchNorm2d(self.num_channels)
        self.spatial = nn.Conv1d(self.num_channels * f2, self.hidden_size, kernel_size=1)
        self.spatial_norm = nn.BatchNorm1d(self.hidden_size)
        self.head = nn.Conv1d(self.hidden_size, self.num_units, kernel_size=1)
        if self.spatial_radius_um is not None:  # filled by set_channel_locations (or load_state_dict)
            self.register_buffer("spatial_mask", torch.ones(self.hidden_size, self.num_channels))
            self.register_buffer("spatial_channel_order", torch.arange(self.num_channels))

    def set_channel_locations(self, channel_locations) -> None:
        """Make the spatial filter local: each hidden feature reads only the channels within ``spatial_radius_um``
        of its stretch of the probe (see ``spatial_neighbourhoods``); weights outside are zeroed and stay zero."""
        if self.spatial_radius_um is None:
            return
        mask, order = spatial_neighbourhoods(channel_locations, self.hidden_size, self.spatial_radius_um)
        with torch.no_grad():
            self.spatial_mask.copy_(torch.from_numpy(mask))
            self.spatial_channel_order.copy_(torch.from_numpy(order))
            self.spatial.weight.copy_(self.spatial_weight()[..., None])

    def spatial_weight(self) -> torch.Tensor:
        """The spatial filter's weight (hidden, channels * f2), channel-major, masked where the filter is local."""
        weight = self.spatial.weight[:, :, 0]
        if self.spatial_radius_um is None:
            return weight
        return weight * self.spatial_mask.repeat_interleave(self.temporal_features[1], dim=1)

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
        x = F.conv1d(x.reshape(batch, -1, length), self.spatial_weight()[..., None], self.spatial.bias)  # flatten C*f2
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

        ``channel_mixing`` (channels, channels), a tensor or a ``ChannelMixing``, if given, re-samples the channels first: the network sees input
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
        x = self.temporal1.weight[:, 0, :] @ windows.reshape(samples, batch * channels)  # (f1, B*C)
        return self._after_first_filter(x, batch, channel_mixing)

    def forward_centres(self, traces: torch.Tensor, centres: torch.Tensor,
                        channel_mixing: "torch.Tensor | ChannelMixing | None" = None) -> torch.Tensor:
        """Logits (batch, units) of the windows of (samples, channels) ``traces`` centred at ``centres``:
        ``forward_windows(gather_windows(traces, centres, ...), channel_mixing)``, with the windows gathered and
        filtered by the first temporal filter a few at a time (``GatheredFirstFilter``) instead of copied whole
        (at 384 channels a batch of 1024 windows is 94 MB in float32)."""
        return F.linear(self.features_centres(traces, centres, channel_mixing), self.head.weight[:, :, 0], self.head.bias)

    def features_centres(self, traces: torch.Tensor, centres: torch.Tensor,
                         channel_mixing: "torch.Tensor | ChannelMixing | None" = None) -> torch.Tensor:
        """Hidden features (batch, hidden_size) of the windows of (samples, channels) ``traces`` centred at
        ``centres``: what the head of ``forward_centres`` reads."""
        if traces.shape[1] != self.num_channels:
            raise ValueError(f"ESortNetwork expects {self.num_channels} channels, got {traces.shape[1]}.")
        x = GatheredFirstFilter.apply(traces, centres, self.temporal1.weight[:, 0, :])  # (f1, B*C)
        return self._features_after_first_filter(x, len(centres), channel_mixing)

    def _after_first_filter(self, x: torch.Tensor, batch: int, channel_mixing) -> torch.Tensor:
        """``forward_windows`` from the first temporal filter's product (f1, batch * channels), before its bias."""
        x = self._features_after_first_filter(x, batch, channel_mixing)
        return F.linear(x, self.head.weight[:, :, 0], self.head.bias)

    def _features_after_first_filter(self, x: torch.Tensor, batch: int, channel_mixing) -> torch.Tensor:
        """The hidden features (batch, hidden_size) from the first temporal filter's product (f1, batch * channels),
        before its bias."""
        f1, f2 = self.temporal_features
        channels = self.num_channels
        if isinstance(channel_mixing, ChannelMixing):  # (f1*B, C) x (C, C), in blocks along the probe
            x = ChannelMixingProduct.apply(x.reshape(f1 * batch, channels), channel_mixing)
        elif channel_mixing is not None:  # one (f1*B, C) x (C, C) product
            x = x.reshape(f1 * batch, channels) @ channel_mixing.to(x.dtype)
        x = x.reshape(f1, batch, channels) + self.temporal1.bias[:, None, None]
        x = torch.relu(self.temporal1_norm(x.reshape(f1 * batch, channels, 1, 1)))
        x = torch.addmm(self.temporal2.bias[:, None], self.temporal2.weight[:, :, 0], x.reshape(f1, batch * channels))
        x = torch.relu(self.temporal2_norm(x.reshape(f2 * batch, channels, 1, 1)))  # (f2*B, C)
        # channel-major (batch, channels * f2), the spatial filter's input order: one transposed copy
        x = x.reshape(f2, batch, channels).permute(1, 2, 0).reshape(batch, channels * f2)
        if self.spatial_radius_um is not None:  # one small product per group of the local filter
            order, hidden, groups = self.local_groups()
            x = LocalSpatialProduct.apply(x, self.spatial_weight(), self.spatial.bias, order, hidden, groups)
        else:
            x = F.linear(x, self.spatial_weight(), self.spatial.bias)
        return torch.relu(self.spatial_norm(x))

    def local_groups(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
        """The local filter's channel order, hidden order and groups (``local_spatial_groups``), cached until the
        mask changes."""
        key = (self.spatial_mask.data_ptr(), self.spatial_mask._version, self.spatial_channel_order._version)
        if getattr(self, "_groups_cache", (None,))[0] != key:
            order = self.spatial_channel_order
            hidden, groups = local_spatial_groups(self.spatial_mask[:, order], self.temporal_features[1])
            self._groups_cache = (key, (order, hidden, groups))
        return self._groups_cache[1]

    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable (``spatial_radius_um`` only for a local filter, so that the
        card of a dense network reads as before)."""
        config = dict(
            num_channels=self.num_channels,
            window_samples=self.window_samples,
            num_units=self.num_units,
            temporal_features=list(self.temporal_features),
            hidden_size=self.hidden_size,
        )
        if self.spatial_radius_um is not None:
            config["spatial_radius_um"] = self.spatial_radius_um
        return config


def spatial_neighbourhoods(channel_locations, hidden_size: int, radius_um: float,
                           group_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Local spatial filter: the mask (hidden_size, channels) of the channels each hidden feature reads, and the
    channel order along the probe (channels sorted along its longer axis, um).

    The sorted channels are cut into ``hidden_size / group_size`` runs of about equal counts; the ``group_size``
    features of group g read the channels within ``radius_um`` (along that axis) of run g, a contiguous range of
    the sorted channels, so that at inference each group is one small matrix product (with fewer channels than
    groups, one run per channel). With a radius that spans the probe every feature reads every channel (the dense
    filter)."""
    locations = np.asarray(channel_locations, dtype="float64")
    channels = len(locations)
    axis = int(np.argmax(np.ptp(locations, axis=0))) if locations.ndim == 2 and locations.shape[1] > 1 else 0
    depth = locations[:, axis] if locations.ndim == 2 else locations
    order = np.argsort(depth, kind="stable")
    sorted_depth = depth[order]
    groups = max(1, min(hidden_size // group_size, channels))
    features = np.array_split(np.arange(hidden_size), groups)
    runs = np.array_split(np.arange(channels), groups)
    mask = np.zeros((hidden_size, channels), dtype="float32")
    for rows, run in zip(features, runs):
        lo = np.searchsorted(sorted_depth, sorted_depth[run[0]] - radius_um, side="left")
        hi = np.searchsorted(sorted_depth, sorted_depth[run[-1]] + radius_um, side="right")
        mask[np.ix_(rows, order[lo:hi])] = 1.0
    return mask, order.astype("int64")


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

    On CPU in bfloat16 the first temporal filter is one matrix product per block instead of a convolution
    (``framed_filter``):
    each channel's traces are cut into overlapping frames of ``(k - 1) * stride + window_samples`` samples, one
    every ``k * stride`` samples, and a frame times a banded (frame samples, f1 * k) matrix gives the filter's f1
    outputs at the k window starts of its stretch. It computes more products than the convolution (the band is zero
    elsewhere) but as one large matrix product, which the CPU runs much faster than ``conv1d`` with one input channel
    and a stride (the throughput figures in docs/speed.md).
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
            ws = a3[:, None] * network.spatial_weight().detach()  # (H, C*f2)
            bs = a3 * network.spatial.bias + d3
            head = network.head.weight.detach()[:, :, 0]
            self.channel_order = None
            self.spatial_groups = [(0, ws.shape[0], 0, ws.shape[1])]  # (first, end hidden row, first, end feature)
            if network.spatial_radius_um is not None:  # local: channels along the probe, one product per group
                order, hidden, self.spatial_groups = network.local_groups()
                # None when the channels are already along the probe: no re-ordering pass at inference
                self.channel_order = None if torch.equal(order.cpu(), torch.arange(len(order))) else order
                self.input_scale, self.temporal1_bias = self.input_scale[order], self.temporal1_bias[order]
                self.temporal2_weight, self.temporal2_bias = self.temporal2_weight[order], self.temporal2_bias[order]
                ws = ws.reshape(-1, network.num_channels, f2)[:, order].reshape(ws.shape[0], -1)
                ws, bs, head = ws[hidden], bs[hidden], head[:, hidden]
            self.spatial_weight = [ws[a:b, lo:hi].to(dt).contiguous() for a, b, lo, hi in self.spatial_groups]
            self.spatial_bias = bs[:, None].to(dt)
            self.head_weight = head.to(dt).contiguous()
            self.head_bias = network.head.bias.detach()[:, None].to(dt)
        self.hidden_size = network.hidden_size
        self.num_features = network.num_channels * f2
        self._framed: dict[int, tuple[int, torch.Tensor]] = {}  # stride -> (k, banded matrix), see framed_filter

    def block_windows(self, device: torch.device) -> int:
        """Windows per block: (channels x 16 features x block) about 4 M values on CPU; 64 k windows on GPU."""
        if device.type != "cpu":
            return 65536
        return int(min(8192, max(256, (1 << 22) // self.num_features)))

    def framed_filter(self, stride: int) -> tuple[int, torch.Tensor]:
        """The first temporal filter as a banded matrix for ``stride``: ``k`` window starts per frame (8 to 32,
        fewer at large strides so that a frame stays within a few windows) and the (frame samples, f1 * k) matrix
        whose column (f, j) holds filter f at rows j * stride ... j * stride + window_samples - 1."""
        if stride not in self._framed:
            samples = self.window_samples
            k = int(max(8, min(32, (2 * samples) // stride)))
            weight = self.temporal1_weight[:, 0, :]  # (f1, T)
            banded = torch.zeros((k - 1) * stride + samples, weight.shape[0], k, dtype=weight.dtype, device=weight.device)
            for j in range(k):
                banded[j * stride : j * stride + samples, :, j] = weight.T
            self._framed[stride] = (k, banded.reshape(banded.shape[0], -1))
        return self._framed[stride]

    @torch.no_grad()
    def __call__(self, traces: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Logits (units, windows) of normalised traces (channels, samples), for the windows starting at samples
        0, stride, 2 * stride, ... (as ``ESortNetwork.forward`` for one trace)."""
        channels, samples = traces.shape
        if samples < self.window_samples:
            raise ValueError(f"ESortNetwork needs at least {self.window_samples} samples, got {samples}.")
        windows = (samples - self.window_samples) // stride + 1
        # float32 keeps the convolution: its logits do not depend on how the recording is cut into chunks (online =
        # offline to the bit), a matrix product's rounding can; bfloat16 makes no such promise
        framed = traces.device.type == "cpu" and self.dtype != torch.float32
        if framed:  # frames of k windows; the input padded with zeros to a whole number of frames
            k, banded = self.framed_filter(stride)
            frame_step, frame_samples = k * stride, banded.shape[0]
            frames = -(-windows // k)
            padded = max(samples, (frames - 1) * frame_step + frame_samples)
        else:
            padded = samples
        x = torch.empty((channels, padded), dtype=self.dtype, device=traces.device)
        x[:, samples:] = 0
        # scaled, cast and made contiguous in one pass, in slices of samples: a transposed input is then
        # read in cache-sized tiles (on CPU, much faster than one pass over the whole chunk)
        step = samples if traces.device.type != "cpu" else self.CAST_SLICE_SAMPLES
        for first in range(0, samples, step):
            last = min(first + step, samples)
            part = traces[:, first:last]
            if self.channel_order is not None:  # channels along the probe (local spatial filter)
                part = part.index_select(0, self.channel_order)
            torch.mul(part, self.input_scale[:, None], out=x[:, first:last])
        block = self.block_windows(traces.device)
        if framed:
            block = max(1, block // k) * k
        f1 = self.temporal1_weight.shape[0]
        out = []
        for first in range(0, windows, block):
            count = min(block, windows - first)
            start = first * stride
            if framed:  # (C * frames, frame samples) x (frame samples, f1 * k), then (C, f1, windows) + bias
                n = -(-count // k)
                rows = x[:, start:].as_strided((channels, n, frame_samples), (x.stride(0), frame_step, 1))
                product = (rows.reshape(channels * n, frame_samples) @ banded).view(channels, n, f1, k)
                y = torch.empty((channels, f1, n * k), dtype=self.dtype, device=traces.device)
                torch.add(product.permute(0, 2, 1, 3), self.temporal1_bias[..., None], out=y.view(channels, f1, n, k))
                y = torch.relu_(y[:, :, :count])
            else:
                part = x[:, None, start : start + (count - 1) * stride + self.window_samples]
                y = torch.relu_(F.conv1d(part, self.temporal1_weight, stride=stride) + self.temporal1_bias)  # (C, f1, n)
            y = torch.relu_(torch.baddbmm(self.temporal2_bias, self.temporal2_weight, y))  # (C, f2, n)
            y = y.reshape(channels * y.shape[1], count)
            h = torch.empty((self.hidden_size, count), dtype=self.dtype, device=traces.device)
            for (a, b, lo, hi), weight in zip(self.spatial_groups, self.spatial_weight):
                torch.addmm(self.spatial_bias[a:b], weight, y[lo:hi], out=h[a:b])
            h = torch.relu_(h)  # (H, n)
            out.append(torch.addmm(self.head_bias, self.head_weight, h).float())
        return torch.cat(out, dim=1)


def local_spatial_groups(mask: torch.Tensor, features_per_channel: int) -> tuple[torch.Tensor, list[tuple]]:
    """The groups of a local spatial filter's mask (hidden, channels), channels in probe order: the hidden rows
    ordered by the range of channels they read, and per group (first row, end row, first feature, end feature)
    of the ordered rows and of the channel-major features. A row reads the whole range from its first to its
    last masked channel (the masked-out weights inside it are zero)."""
    reads = mask > 0
    channels = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(reads, channels, mask.shape[1]).amin(dim=1).clamp(max=mask.shape[1] - 1)
    end = torch.where(reads, channels + 1, 0).amax(dim=1).clamp(min=1)
    end = torch.maximum(end, first + 1)
    hidden = torch.argsort(first * (mask.shape[1] + 1) + end, stable=True)
    groups = []
    for row, (lo, hi) in enumerate(zip(first[hidden].tolist(), end[hidden].tolist())):
        if groups and groups[-1][2:] == (lo * features_per_channel, hi * features_per_channel):
            groups[-1] = (groups[-1][0], row + 1, *groups[-1][2:])
        else:
            groups.append((row, row + 1, lo * features_per_channel, hi * features_per_channel))
    return hidden, groups


class LocalSpatialProduct(torch.autograd.Function):
    """The local spatial filter of a batch of single windows, one product per group (the training form).

    ``features`` (batch, channels * f2) channel-major, ``weight`` (hidden, channels * f2) channel-major and masked,
    ``bias`` (hidden,); ``order``, ``hidden`` and ``groups`` from ``local_spatial_groups`` (channels along the
    probe). Returns (batch, hidden): ``features`` times ``weight``.T plus ``bias``, at the cost of the groups'
    products instead of the dense one, forward and backward. Channels already numbered along the probe (as on
    Neuropixels probes) are not re-ordered. Under ``torch.autocast`` the products run in the autocast precision,
    as ``F.linear`` would.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, order, hidden, groups):
        batch = features.shape[0]
        channels = len(order)
        f2 = features.shape[1] // channels
        dtype = _autocast_dtype(features.device.type) or features.dtype
        in_order = bool((order == torch.arange(channels, device=order.device)).all())
        # channels along the probe, channel-major (batch, channels * f2); hidden rows in group order
        x = features if in_order else features.reshape(batch, channels, f2).index_select(1, order).reshape(batch, -1)
        x = x.to(dtype)
        w = weight if in_order else weight.reshape(-1, channels, f2).index_select(1, order).reshape(weight.shape[0], -1)
        w = w[hidden].to(dtype)
        out = torch.empty((weight.shape[0], batch), dtype=dtype, device=features.device)  # (hidden in group order, B)
        for a, b, lo, hi in groups:
            torch.mm(w[a:b, lo:hi], x[:, lo:hi].t(), out=out[a:b])
        result = torch.empty((batch, weight.shape[0]), dtype=dtype, device=features.device)
        result[:, hidden] = out.t()
        ctx.save_for_backward(x, w, order, hidden)
        ctx.groups, ctx.shape, ctx.in_order = groups, (f2, batch, channels), in_order
        ctx.dtypes = (features.dtype, weight.dtype)
        return result + bias.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        x, w, order, hidden = ctx.saved_tensors
        f2, batch, channels = ctx.shape
        grad_t = grad.to(x.dtype).t()[hidden]  # (hidden in group order, B)
        grad_x = torch.zeros_like(x)
        grad_w = torch.zeros_like(w)
        for a, b, lo, hi in ctx.groups:
            grad_x[:, lo:hi].addmm_(grad_t[a:b].t(), w[a:b, lo:hi])
            torch.mm(grad_t[a:b], x[:, lo:hi], out=grad_w[a:b, lo:hi])
        features_dtype, weight_dtype = ctx.dtypes
        if ctx.in_order:
            grad_features = grad_x.to(features_dtype)
        else:
            grad_features = torch.empty((batch, channels, f2), dtype=features_dtype, device=x.device)
            grad_features[:, order] = grad_x.reshape(batch, channels, f2).to(features_dtype)
            grad_features = grad_features.reshape(batch, channels * f2)
        grad_weight = torch.empty((w.shape[0], channels, f2), dtype=weight_dtype, device=x.device)
        grad_weight[hidden[:, None], order] = grad_w.reshape(-1, channels, f2).to(weight_dtype)  # rows and channels back
        return (grad_features, grad_weight.reshape(w.shape[0], -1), grad.sum(0).to(weight_dtype), None, None, None)


def gather_windows(traces: torch.Tensor, centres: torch.Tensor, window_samples: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Windows (window_samples, batch, channels) of (samples, channels) traces centred at ``centres``, as ``dtype``
    (the layout of ``ESortNetwork.forward_windows``: one gather, no transposed copy)."""
    offsets = torch.arange(window_samples, device=traces.device) - window_samples // 2
    rows = (offsets[:, None] + centres[None, :]).reshape(-1)  # index_select: faster than indexing on CPU
    return traces.index_select(0, rows).reshape(window_samples, len(centres), -1).to(dtype)


class GatheredFirstFilter(torch.autograd.Function):
    """The first temporal filter's product of the windows of (samples, channels) ``traces`` centred at ``centres``:
    ``weight`` (f1, window_samples) times the windows (window_samples, batch * channels), as (f1, batch * channels),
    the windows gathered ``WINDOWS_PER_BLOCK`` at a time on CPU (and again in backward, for the weight's gradient:
    the traces get none), so that they stay in the cache; on a GPU the whole batch at once (one launch per
    operation). Under ``torch.autocast`` the products run in the autocast precision."""

    WINDOWS_PER_BLOCK = 32

    @staticmethod
    def block_windows(device: torch.device, count: int) -> int:
        """Windows gathered at once: ``WINDOWS_PER_BLOCK`` on CPU, all ``count`` on a GPU."""
        return GatheredFirstFilter.WINDOWS_PER_BLOCK if device.type == "cpu" else max(1, count)

    @staticmethod
    def forward(ctx, traces, centres, weight):
        dtype = _autocast_dtype(traces.device.type) or weight.dtype
        f1, samples = weight.shape
        channels = traces.shape[1]
        w = weight.to(dtype)
        out = torch.empty((f1, len(centres), channels), dtype=dtype, device=traces.device)
        step = GatheredFirstFilter.block_windows(traces.device, len(centres))
        for first in range(0, len(centres), step):
            windows = gather_windows(traces, centres[first : first + step], samples, dtype)  # (T, block, C)
            out[:, first : first + windows.shape[1]] = (w @ windows.reshape(samples, -1)).reshape(f1, -1, channels)
        ctx.save_for_backward(traces, centres)
        ctx.weight_dtype, ctx.samples = weight.dtype, samples
        return out.reshape(f1, -1)

    @staticmethod
    def backward(ctx, grad):
        traces, centres = ctx.saved_tensors
        f1, channels, samples = grad.shape[0], traces.shape[1], ctx.samples
        grad = grad.reshape(f1, len(centres), channels)
        grad_weight = torch.zeros((f1, samples), dtype=torch.promote_types(grad.dtype, torch.float32),
                                  device=grad.device)
        step = GatheredFirstFilter.block_windows(traces.device, len(centres))
        for first in range(0, len(centres), step):
            windows = gather_windows(traces, centres[first : first + step], samples, grad.dtype)  # (T, block, C)
            part = grad[:, first : first + windows.shape[1]].reshape(f1, -1)  # (f1, block * C)
            grad_weight += (part @ windows.reshape(samples, -1).t()).to(grad_weight.dtype)
        return None, None, grad_weight.to(ctx.weight_dtype)


class ChannelMixing:
    """A (source, target) channel-mixing matrix kept as column blocks, for features of shape (rows, channels).

    Each block of ``block_channels`` consecutive target channels reads the contiguous range of source channels
    that holds every weight of its columns above ``tolerance`` times the largest weight; the weights outside are
    dropped. A kriging re-sampling kernel along the probe (the drift augmentation) is banded when the channels are
    numbered along the probe, as on Neuropixels probes, and then costs a fraction of the dense product (at 384
    channels in 32-channel blocks, about a fifth); where the blocks would read more than half of the matrix, it is
    one dense block."""

    def __init__(self, matrix: torch.Tensor, block_channels: int = 32, tolerance: float = 1e-6):
        channels = matrix.shape[0]
        if matrix.shape != (channels, channels):
            raise ValueError(f"a channel-mixing matrix is square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        reaches = matrix.abs() > tolerance * float(matrix.abs().max())
        blocks = []
        for a in range(0, channels, block_channels):
            b = min(a + block_channels, channels)
            rows = torch.nonzero(reaches[:, a:b].any(dim=1)).flatten()
            lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (a, b)
            blocks.append((a, b, lo, hi))
        if sum((b - a) * (hi - lo) for a, b, lo, hi in blocks) > channels * channels / 2:
            blocks = [(0, channels, 0, channels)]
        self.blocks = blocks
        self.weights = [matrix[lo:hi, a:b].contiguous() for a, b, lo, hi in blocks]


class ChannelMixingProduct(torch.autograd.Function):
    """``features`` (rows, channels) times a ``ChannelMixing``'s matrix, block by block, forward and backward
    (the matrix is a constant: no gradient). Under ``torch.autocast`` the products run in the autocast precision."""

    @staticmethod
    def forward(ctx, features, mixing):
        dtype = _autocast_dtype(features.device.type) or features.dtype
        x = features.to(dtype)
        weights = [w.to(device=x.device, dtype=dtype) for w in mixing.weights]
        out = torch.empty_like(x)
        for (a, b, lo, hi), weight in zip(mixing.blocks, weights):
            torch.mm(x[:, lo:hi], weight, out=out[:, a:b])
        ctx.blocks, ctx.weights, ctx.features_dtype = mixing.blocks, weights, features.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.to(ctx.weights[0].dtype)
        grad_features = torch.zeros_like(grad)
        for (a, b, lo, hi), weight in zip(ctx.blocks, ctx.weights):
            grad_features[:, lo:hi].addmm_(grad[:, a:b], weight.t())
        return grad_features.to(ctx.features_dtype), None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The precision ``torch.autocast`` computes products in on ``device_type`` now; None outside autocast."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a BatchNorm in eval mode: y = scale * x + shift, per channel."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale.detach(), (norm.bias - scale * norm.running_mean).detach()
