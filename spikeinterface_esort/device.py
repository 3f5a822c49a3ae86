"""Choice of the torch device and CPU threads."""

from __future__ import annotations

import contextlib

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
