"""Shared ground-truth recordings, generated once per test session with SpikeInterface's generators
and saved to a temporary folder (in-memory generated recordings are not serialisable)."""

from __future__ import annotations

import pytest
import torch
from spikeinterface.core import generate_ground_truth_recording

from spikeinterface_esort.device import native_bfloat16

PROBE = dict(num_columns=4, xpitch=20, ypitch=20, contact_shapes="circle", contact_shape_params={"radius": 6})
SAMPLING_FREQUENCY = 30000.0

NATIVE_BFLOAT16 = native_bfloat16(torch.device("cpu"))
needs_native_bfloat16 = pytest.mark.skipif(
    not NATIVE_BFLOAT16, reason="this CPU has no AVX-512 BF16 or AMX: esort refuses bfloat16 here (emulated, about 100x slower)"
)


def generate(folder, durations, num_channels, num_units, seed):
    recording, sorting = generate_ground_truth_recording(
        durations=durations, sampling_frequency=SAMPLING_FREQUENCY, num_channels=num_channels,
        num_units=num_units, generate_probe_kwargs=PROBE, seed=seed,
    )
    recording = recording.save(folder=folder / "recording", n_jobs=1, progress_bar=False)
    sorting = sorting.save(folder=folder / "ground_truth")
    return recording, sorting, folder / "ground_truth"


@pytest.fixture(scope="session")
def ground_truth_recording(tmp_path_factory):
    """40 s, 32 channels (4 columns x 8 rows, 20 um pitch), 10 units: (recording, sorting, sorting folder)."""
    return generate(tmp_path_factory.mktemp("gt32"), [40.0], 32, 10, seed=0)


@pytest.fixture(scope="session")
def small_recording(tmp_path_factory):
    """12 s, 8 channels, 4 units: for quick checks of behaviour rather than accuracy."""
    return generate(tmp_path_factory.mktemp("gt8"), [12.0], 8, 4, seed=3)


@pytest.fixture(scope="session")
def multi_segment_recording(tmp_path_factory):
    """Two segments of 20 s and 10 s, 16 channels, 6 units."""
    return generate(tmp_path_factory.mktemp("gt16x2"), [20.0, 10.0], 16, 6, seed=5)


@pytest.fixture(scope="session")
def small_esort_run(small_recording, tmp_path_factory):
    """esort run with run_sorter on ``small_recording``, trained on ground truth of its first 8 s:
    (run_sorter folder, sorting)."""
    import spikeinterface.sorters as ss

    import spikeinterface_esort  # noqa: F401

    recording, _, gt_folder = small_recording
    folder = tmp_path_factory.mktemp("esort_small") / "esort_output"
    sorting = ss.run_sorter("esort", recording, folder=folder, annotation_sorting_path=str(gt_folder), train_duration_s=8.0)
    return folder, sorting
