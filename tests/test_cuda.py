"""The GPU path: the same sort on a CUDA device as on the CPU. Skipped where torch sees no CUDA GPU (the project's
CPU machines and CI); on a GPU machine run them with ``python -m pytest -q tests/test_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest
import spikeinterface.full as si
import torch

import spikeinterface_esort  # noqa: F401  (registers "esort", as a user does)
from spikeinterface_esort import ESortModel
from spikeinterface_esort.tools.datasets import held_out_performance
from spikeinterface_esort.device import native_bfloat16

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")


def equal_fraction(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of ``reference``'s spikes (spike vectors) that ``other`` has too: same unit, same sample."""
    def keys(spikes):
        return spikes["unit_index"].astype(np.int64) * (1 << 40) + spikes["sample_index"].astype(np.int64)

    return float(np.isin(keys(reference), keys(other)).mean()) if len(reference) else 1.0


def test_a_model_sorts_on_the_gpu_as_on_the_cpu(small_recording, small_esort_run, tmp_path):
    """float32, stride 1: the network on the GPU and the FFT filter run there (``filters_on_device``) give the CPU's
    spikes, float rounding aside."""
    recording = small_recording[0]
    folder, _ = small_esort_run  # trained where torch_device "auto" put it (here: the GPU)
    on_cpu = ESortModel.load(folder, device="cpu")
    on_gpu = ESortModel.load(folder, device="cuda")
    assert on_cpu.device.type == "cpu" and on_gpu.device.type == "cuda"
    cpu = on_cpu.sort(recording, folder=tmp_path / "cpu", inference_dtype="float32").to_spike_vector()
    gpu = on_gpu.sort(recording, folder=tmp_path / "gpu", inference_dtype="float32").to_spike_vector()
    assert len(cpu) > 0
    assert abs(len(gpu) - len(cpu)) <= max(2, 0.01 * len(cpu))
    assert equal_fraction(cpu, gpu) >= 0.99 and equal_fraction(gpu, cpu) >= 0.99


def test_run_sorter_on_the_gpu_with_the_defaults(ground_truth_recording, tmp_path):
    recording, ground_truth, gt_folder = ground_truth_recording
    folder = tmp_path / "esort_gpu"
    sorting = si.run_sorter(
        "esort", recording, folder=folder, annotation_sorting_path=str(gt_folder), train_duration_s=20.0,
        torch_device="cuda",
    )
    accuracy = held_out_performance(sorting, ground_truth, recording.get_num_samples() // 2)["accuracy"]
    assert accuracy.mean() >= 0.85, accuracy
    log = (folder / "sorter_output" / "esort.log").read_text()
    precision = "bfloat16" if native_bfloat16(torch.device("cuda")) else "float32"  # compute capability 8.0+
    assert "device cuda" in log and f"inference_dtype: auto -> {precision} on cuda" in log
