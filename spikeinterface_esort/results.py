"""Reading an esort run's outputs beyond the sorting: per-spike network probabilities, and phy export with
esort's curation columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _sorter_output(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder / "sorter_output" if (folder / "sorter_output").is_dir() else folder


def _unit_spikes(folder: str | Path, segment_index: int) -> dict:
    """``{unit_id: (sample_index, probability)}`` of an esort run's spikes, each unit's in time order."""
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
        out[unit_id] = (spikes["sample_index"][mine][order], probabilities[mine][order])
    return out


def spike_probabilities(folder: str | Path, segment_index: int = 0) -> dict:
    """The smoothed network probability of every spike of an esort run, per unit: ``{unit_id: array}``, each
    aligned with ``sorting.get_unit_spike_train(unit_id, segment_index)``. ``folder`` is the ``run_sorter``
    folder or its ``sorter_output``."""
    return {unit_id: probability for unit_id, (_, probability) in _unit_spikes(folder, segment_index).items()}


def export_to_phy(
    sorting_analyzer, output_folder: str | Path, esort_folder: str | Path, additional_properties: list | None = None,
    **export_kwargs,
) -> Path:
    """SpikeInterface's ``export_to_phy`` of an analyzer of an esort sorting, with esort's curation columns:
    every ``esort_*`` unit property in phy's cluster table (``cluster_<name>.tsv``) and each spike's smoothed
    network probability as phy's per-spike attribute ``spike_esort_probability.npy`` (float32, in the order of
    ``spike_times.npy``; NaN for a spike that is not in esort's output, such as one added by curation).

    ``esort_folder`` is the esort ``run_sorter`` folder (or its ``sorter_output``); ``additional_properties``
    adds other unit properties; ``export_kwargs`` go to ``spikeinterface.exporters.export_to_phy``.
    Returns the phy folder."""
    from spikeinterface.exporters import export_to_phy as si_export_to_phy

    sorting = sorting_analyzer.sorting
    esort_spikes = _unit_spikes(esort_folder, segment_index=0)  # phy reads one segment
    esort_properties = [name for name in sorting.get_property_keys() if name.startswith("esort_")]
    properties = list(dict.fromkeys(esort_properties + list(additional_properties or [])))
    si_export_to_phy(sorting_analyzer, output_folder, additional_properties=properties, **export_kwargs)

    output_folder = Path(output_folder)
    spikes = sorting.to_spike_vector(concatenated=False)[0]  # the order export_to_phy writes spike_times.npy in
    values = np.full(len(spikes), np.nan, dtype="float32")
    for unit_index, unit_id in enumerate(sorting.unit_ids):
        samples, probability = esort_spikes.get(unit_id, (np.zeros(0, dtype="int64"), None))
        if len(samples) == 0:
            continue
        mine = np.flatnonzero(spikes["unit_index"] == unit_index)
        position = np.minimum(np.searchsorted(samples, spikes["sample_index"][mine]), len(samples) - 1)
        found = samples[position] == spikes["sample_index"][mine]
        values[mine[found]] = probability[position[found]]
    np.save(output_folder / "spike_esort_probability.npy", values)
    return output_folder
