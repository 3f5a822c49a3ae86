"""Ground-truth recordings from SpikeInterface's generators, and held-out scoring.

Used by the demo (``python -m spikeinterface_esort demo``); the same calls a user
would make: ``generate_ground_truth_recording``, ``save``, ``compare_sorter_to_ground_truth``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from spikeinterface.core import BaseRecording, BaseSorting, generate_ground_truth_recording, load


def generate_dataset(
    folder: str | Path,
    num_channels: int = 32,
    num_units: int = 10,
    duration_s: float = 40.0,
    sampling_frequency: float = 30000.0,
    num_segments: int = 1,
    seed: int = 0,
) -> tuple[BaseRecording, BaseSorting]:
    """A ground-truth recording on a 4-column, 20 um pitch probe, saved (binary) under ``folder``:
    ``folder/recording`` and ``folder/ground_truth``. Reloaded if already there."""
    folder = Path(folder)
    rec_folder, gt_folder = folder / "recording", folder / "ground_truth"
    if rec_folder.is_dir() and gt_folder.is_dir():
        return load(rec_folder), load(gt_folder)
    recording, sorting = generate_ground_truth_recording(
        durations=[duration_s] * num_segments,
        sampling_frequency=sampling_frequency,
        num_channels=num_channels,
        num_units=num_units,
        generate_probe_kwargs=dict(
            num_columns=4 if num_channels >= 8 else 1, xpitch=20, ypitch=20,
            contact_shapes="circle", contact_shape_params={"radius": 6},
        ),
        seed=seed,
    )
    recording = recording.save(folder=rec_folder, overwrite=True, n_jobs=1, progress_bar=False)
    sorting = sorting.save(folder=gt_folder, overwrite=True)
    return recording, sorting


def held_out_performance(sorting: BaseSorting, ground_truth: BaseSorting, start_frame: int) -> pd.DataFrame:
    """Per ground-truth unit accuracy, precision and recall of ``sorting`` on frames from ``start_frame``
    to the end of segment 0, with SpikeInterface's ``compare_sorter_to_ground_truth`` defaults."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comparison = compare_sorter_to_ground_truth(
        ground_truth.frame_slice(start_frame, None), sorting.frame_slice(start_frame, None)
    )
    return comparison.get_performance()[["accuracy", "precision", "recall"]].astype(float)


def summarise(performance: pd.DataFrame, well_detected: float = 0.8) -> dict:
    """Mean accuracy, precision and recall over ground-truth units, and the count above ``well_detected`` accuracy."""
    return dict(
        accuracy=float(performance["accuracy"].mean()),
        precision=float(performance["precision"].mean()),
        recall=float(performance["recall"].mean()),
        well_detected=int((performance["accuracy"] > well_detected).sum()),
        num_units=int(len(performance)),
    )

