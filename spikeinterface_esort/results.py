"""Reading an esort run's outputs beyond the sorting: per-spike network probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _sorter_output(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder / "sorter_output" if (folder / "sorter_output").is_dir() else folder


def spike_probabilities(folder: str | Path, segment_index: int = 0) -> dict:
    """The smoothed network probability of every spike of an esort run, per unit: ``{unit_id: array}``, each
    aligned with ``sorting.get_unit_spike_train(unit_id, segment_index)``. ``folder`` is the ``run_sorter``
    folder or its ``sorter_output``."""
    from spikeinterface.core import load

    output = _sorter_output(folder)
    probabilities_file, sorting_folder = output / "spike_probabilities.npy", output / "sorting"
    if not probabilities_file.is_file() or not sorting_folder.is_dir():
        raise ValueError(f"{folder} is not the folder of a completed esort run (no spike_probabilities.npy or sorting).")
    sorting = load(sorting_folder)
    spikes = sorting.to_spike_vector()
    probabilities = np.load(probabilities_file)
    if len(probabilities) != len(spikes):
        raise ValueError(f"{probabilities_file} has {len(probabilities)} values for {len(spikes)} spikes.")
    out = {}
    for unit_index, unit_id in enumerate(sorting.unit_ids):
        mine = (spikes["unit_index"] == unit_index) & (spikes["segment_index"] == segment_index)
        order = np.argsort(spikes["sample_index"][mine], kind="stable")
        out[unit_id] = probabilities[mine][order]
    return out
