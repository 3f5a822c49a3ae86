"""Teacher ensembles: annotations from several sorters of the same training window.

SpikeInterface's ``compare_multiple_sorters`` matches the sorters' units (spike trains agreeing within
``ENSEMBLE_DELTA_MS``, agreement score >= ``ENSEMBLE_MATCH_SCORE``). In a unit that two or more sorters found,
a spike at least two of them claim is a positive; a spike only one claims is *uncertain*: it is neither a
positive nor a negative while training, and not counted when thresholds are chosen. A unit only one sorter found
is kept (every spike a positive) or dropped, by ``unmatched_units``. Spike times follow the first sorter's
alignment: the others' are shifted by their median offset to it on matched spikes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from spikeinterface.core import BaseSorting

logger = logging.getLogger("spikeinterface_esort")

ENSEMBLE_DELTA_MS = 0.4  # SpikeInterface's default delta_time for matching spikes across sorters
ENSEMBLE_MATCH_SCORE = 0.5  # SpikeInterface's default match_score for matching units
UNMATCHED_UNITS = ("keep", "drop")


@dataclass
class EnsembleSpikes:
    """The combined spikes of segment 0, in the sortings' frames, sorted by sample: ``uncertain`` marks spikes
    only one sorter claims in a unit others found too. ``sources[i]`` maps sorter name -> unit id for unit i."""

    sample_index: np.ndarray
    unit_index: np.ndarray
    uncertain: np.ndarray
    sources: list[dict]
    report: dict = field(default_factory=dict)

    @property
    def unit_ids(self) -> np.ndarray:
        return np.arange(len(self.sources))


def _spike_train(sorting: BaseSorting, unit_id) -> np.ndarray:
    return np.asarray(sorting.get_unit_spike_train(unit_id, segment_index=0), dtype=np.int64)


def nearest_offsets(reference: np.ndarray, other: np.ndarray, delta: int) -> np.ndarray:
    """``other - reference`` for each spike of ``other`` (sorted) with a ``reference`` spike (sorted) within
    ``delta`` frames (the nearest one)."""
    if len(reference) == 0 or len(other) == 0:
        return np.zeros(0, dtype=np.int64)
    right = np.clip(np.searchsorted(reference, other), 1, len(reference) - 1) if len(reference) > 1 else np.zeros(
        len(other), dtype=np.int64)
    left = np.maximum(right - 1, 0)
    d_left, d_right = other - reference[left], other - reference[right]
    offsets = np.where(np.abs(d_left) <= np.abs(d_right), d_left, d_right)
    return offsets[np.abs(offsets) <= delta]


def group_events(times: np.ndarray, sorters: np.ndarray, delta: int) -> tuple[np.ndarray, np.ndarray]:
    """Spikes of one unit from several sorters (``times`` sorted) grouped into events: a spike within ``delta``
    frames of its event's first spike, from a sorter not yet in the event, joins it. Returns each spike's event
    index and each event's number of sorters."""
    event = np.empty(len(times), dtype=np.int64)
    counts: list[int] = []
    start, members = None, set()
    for i, (t, s) in enumerate(zip(times.tolist(), sorters.tolist())):
        if start is None or t - start > delta or s in members:
            start, members = t, set()
            counts.append(0)
        members.add(s)
        counts[-1] += 1
        event[i] = len(counts) - 1
    return event, np.asarray(counts, dtype=np.int64)


def combine_sortings(sortings: dict[str, BaseSorting], unmatched_units: str = "keep") -> EnsembleSpikes:
    """Combine several sortings of the same recording (segment 0) into annotations; see the module docstring."""
    from spikeinterface.comparison import compare_multiple_sorters

    if unmatched_units not in UNMATCHED_UNITS:
        raise ValueError(f"unmatched_units must be one of {UNMATCHED_UNITS}, got {unmatched_units!r}.")
    names = list(sortings)
    fs = sortings[names[0]].get_sampling_frequency()
    delta = int(round(ENSEMBLE_DELTA_MS * fs / 1000.0))
    comparison = compare_multiple_sorters(
        [sortings[n] for n in names], names, delta_time=ENSEMBLE_DELTA_MS, match_score=ENSEMBLE_MATCH_SCORE,
        verbose=False,
    )
    agreement = comparison.get_agreement_sorting(minimum_agreement_count=1)
    groups = [dict(agreement.get_unit_property(u, "unit_ids")) for u in agreement.unit_ids]

    # each sorter's timing offset to the first sorter, on the spikes of units both found
    offsets = {names[0]: 0}
    for name in names[1:]:
        found = [nearest_offsets(_spike_train(sortings[names[0]], g[names[0]]), _spike_train(sortings[name], g[name]), delta)
                 for g in groups if names[0] in g and name in g]
        found = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        offsets[name] = int(round(float(np.median(found)))) if len(found) else 0

    samples, units, uncertain, sources = [], [], [], []
    dropped = []
    for group in groups:
        members = [n for n in names if n in group]
        if len(members) == 1 and unmatched_units == "drop":
            dropped.append(group)
            continue
        trains = [_spike_train(sortings[n], group[n]) - offsets[n] for n in members]
        times = np.concatenate(trains)
        sorter_of = np.concatenate([np.full(len(t), i) for i, t in enumerate(trains)])
        order = np.lexsort((sorter_of, times))
        times, sorter_of = times[order], sorter_of[order]
        if len(members) == 1:
            keep, unsure = np.ones(len(times), dtype=bool), np.zeros(len(times), dtype=bool)
        else:
            event, counts = group_events(times, sorter_of, delta)
            # one spike per event: that of the first sorter (in the order given) that claims it
            by_event = np.lexsort((sorter_of, event))
            keep = np.zeros(len(times), dtype=bool)
            keep[by_event[np.r_[True, event[by_event][1:] != event[by_event][:-1]]]] = True
            unsure = counts[event] < 2
        u = len(sources)
        samples.append(times[keep])
        units.append(np.full(int(keep.sum()), u, dtype=np.int64))
        uncertain.append(unsure[keep])
        sources.append({n: group[n] for n in members})
    sample_index = np.concatenate(samples) if samples else np.zeros(0, dtype=np.int64)
    unit_index = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    uncertain_mask = np.concatenate(uncertain) if uncertain else np.zeros(0, dtype=bool)
    order = np.argsort(sample_index, kind="stable")
    report = dict(
        sorters={n: len(sortings[n].unit_ids) for n in names},
        offsets_samples=offsets,
        matched_units=sum(len(s) > 1 for s in sources),
        unmatched_units_kept=sum(len(s) == 1 for s in sources),
        unmatched_units_dropped=len(dropped),
        positive_spikes=int((~uncertain_mask).sum()),
        uncertain_spikes=int(uncertain_mask.sum()),
    )
    logger.info(
        "annotation ensemble: %s units from %s; %d units matched by two or more, %d found by one kept, %d dropped; "
        "%d positive spikes, %d claimed by one sorter only (left out of training); timing offsets to %s %s samples",
        "/".join(str(v) for v in report["sorters"].values()), "/".join(names), report["matched_units"],
        report["unmatched_units_kept"], report["unmatched_units_dropped"], report["positive_spikes"],
        report["uncertain_spikes"], names[0], offsets,
    )
    return EnsembleSpikes(sample_index[order], unit_index[order], uncertain_mask[order], sources, report)
