"""Choice of the torch device and CPU threads."""

from __future__ import annotations

import contextlib
import functools

import torch


def resolve_device(torch_device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:N' as given, checked."""
    if torch_device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(torch_device)
    except RuntimeError as err:
        raise ValueError(f"esort parameter 'torch_device'={torch_device!r} is not a torch device ({err}).") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"esort parameter 'torch_device'={torch_device!r}, but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use 'auto' or 'cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"esort parameter 'torch_device'={torch_device!r}: only {torch.cuda.device_count()} GPU(s) here."
            )
    elif device.type != "cpu":
        raise ValueError(f"esort parameter 'torch_device'={torch_device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


@contextlib.contextmanager
def torch_threads(n_threads: int):
    """Use ``n_threads`` CPU threads in torch inside the block; restore the previous number after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)  # asked once per inference chunk (ESortModel.inference_dtype); hardware is fixed
def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that does (compute capability 8.0 or newer), or
    a CPU with AVX-512 BF16 or AMX. Elsewhere torch emulates it, far slower than float32 (docs/speed.md)."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch older than 2.4
            return bool(torch.cuda.is_bf16_supported())
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(parameter: str, requested: str, device: torch.device) -> str:
    """The precision the ``parameter`` ('inference_dtype' or 'training_dtype') value ``requested`` means on
    ``device``: 'auto' is 'bfloat16' where ``native_bfloat16``, else 'float32'. Raises ``ValueError`` for
    'bfloat16' where it would be emulated and for 'float16' off a GPU."""
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if requested == "bfloat16" and not native_bfloat16(device):
        where = "this GPU" if device.type == "cuda" else "this CPU (no AVX-512 BF16 or AMX)"
        raise ValueError(
            f"esort parameter '{parameter}'='bfloat16': {where} has no native bfloat16, and emulated it is "
            "about 100x slower than float32 (python -m spikeinterface_esort.tools.throughput --precision-check); "
            "use 'auto' (bfloat16 where native, else float32) or 'float32'."
        )
    if requested == "float16" and device.type != "cuda":
        raise ValueError(f"esort parameter '{parameter}'='float16' needs a CUDA device (torch_device); "
                         "on a CPU use 'auto' or 'float32'.")
    return requested


def resolve_precision(params: dict, device: torch.device) -> dict:
    """``params`` with ``training_dtype`` and ``inference_dtype`` as used on ``device`` ('auto' resolved; see
    ``device.resolve_dtype``, which refuses emulated bfloat16 and float16 off a GPU)."""
    return dict(params, **{name: resolve_dtype(name, params[name], device) for name in ("training_dtype", "inference_dtype")})
