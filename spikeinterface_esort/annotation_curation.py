"""Annotation curation: the annotated units cleaned with SpikeInterface's curation before training.

A teacher sorter's units on a short window carry its errors: one neuron split into several units, duplicated
units, several neurons in one unit, noise or contaminated units. By default (``annotation_curation="auto"``) a
teacher sorter's units are split where they hold spikes of unlike waveforms and the units with an SNR of 3 or less
are then removed (``TEACHER_CURATION``); a saved sorting is used as given. The annotations are read
as a sorting of the (preprocessed) training recording and cleaned, in this order, by SpikeInterface's own tools:

0. ``split_units``: a unit that holds the spikes of several neurons (a teacher on a short window merges
   neighbours) is split. Each unit's waveforms on its strongest channels are reduced to a few principal
   components and clustered with ISO-SPLIT (``isosplit6``, one of the clusterers of SpikeInterface's
   ``local_feature_clustering``); clusters whose mean waveforms are alike (cosine similarity at or above
   ``template_similarity``: the same neuron at another depth of a drifting probe, or at another amplitude) are
   joined again, most alike first, and the unit is split when clusters with unlike waveforms remain
   (``split_merged_units``).
1. ``unit_thresholds``: quality metrics (``compute_quality_metrics``: ``snr``, ``isi_violations_ratio``,
   ``presence_ratio``, ``amplitude_cutoff``, ...) labelled with ``threshold_metrics_label_units``; the units that
   fail are removed with their spikes (first, so that a noise unit is never merged into a good one).
2. ``merge_presets``: ``spikeinterface.curation.auto_merge_units``-style merging of the remaining units, one
   preset after the other (for example ``"x_contaminations"``, ``"similarity_correlograms"``), each repeated until
   it finds no merge; ``merge_steps_params`` overrides the presets' step parameters (``min_spikes`` is 100 there).
3. ``remove_redundant``: ``remove_redundant_units`` drops units that duplicate another's spikes.

The log gives each step's merged and removed units and spikes; ``annotation_curation.json`` in the sorter folder
keeps them with the quality metrics.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, NumpySorting

from .annotation import Annotations, remap_units

logger = logging.getLogger("spikeinterface_esort")

CURATION_KEYS = ("split_units", "merge_presets", "merge_steps_params", "unit_thresholds", "remove_redundant")
# split_units options: clusters whose mean waveforms have a cosine similarity below template_similarity are split
# apart (docs/real-data.md); min_spikes: the smallest part; channels: the unit's strongest channels read;
# features: principal components clustered
SPLIT_DEFAULTS = {"template_similarity": 0.5, "min_spikes": 20, "channels": 8, "features": 5}
# annotation_curation="auto" for a teacher sorter's annotations: units holding several neurons split, then its noise
# units (SNR 3 or less) removed (measured across the benchmark presets: docs/real-data.md)
TEACHER_CURATION = {"split_units": {}, "unit_thresholds": {"snr": {"greater": 3.0}}}


def resolve_annotation_curation(params: dict) -> dict | None:
    """The curation that runs: ``annotation_curation`` as given, or for ``"auto"`` ``TEACHER_CURATION`` when a
    teacher sorter annotates (``annotation_sorting_path`` None) and None for a saved sorting."""
    curation = params["annotation_curation"]
    if curation == "auto":
        return None if params["annotation_sorting_path"] is not None else copy.deepcopy(TEACHER_CURATION)
    return curation


def check_annotation_curation(curation: dict | None) -> None:
    """Raise ``ValueError`` naming what is wrong in the ``annotation_curation`` parameter."""
    if curation is None or curation == "auto":
        return
    from spikeinterface.curation.auto_merge import _compute_merge_presets, _default_step_params

    what = "esort parameter 'annotation_curation'"
    unknown = sorted(set(curation) - set(CURATION_KEYS))
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; allowed: {list(CURATION_KEYS)}.")
    presets = curation.get("merge_presets", [])
    if not isinstance(presets, list) or not all(p in _compute_merge_presets for p in presets):
        raise ValueError(f"{what}: 'merge_presets' must be a list of SpikeInterface auto-merge presets "
                         f"{sorted(_compute_merge_presets)}, got {presets!r}.")
    steps = curation.get("merge_steps_params", {})
    if not isinstance(steps, dict) or not all(s in _default_step_params and isinstance(v, dict) for s, v in steps.items()):
        raise ValueError(f"{what}: 'merge_steps_params' must map auto-merge steps {sorted(_default_step_params)} "
                         f"to dicts of their parameters, got {steps!r}.")
    thresholds = curation.get("unit_thresholds", {})
    if not isinstance(thresholds, dict) or not all(
        isinstance(v, dict) and v and set(v) <= {"greater", "less", "abs"} for v in thresholds.values()
    ):
        raise ValueError(f"{what}: 'unit_thresholds' must map quality metric names to dicts with 'greater' and/or "
                         f"'less' (e.g. {{'isi_violations_ratio': {{'less': 0.5}}}}), got {thresholds!r}.")
    columns = quality_metric_columns()
    unknown_metrics = sorted(set(thresholds) - set(columns))
    if unknown_metrics:
        raise ValueError(f"{what}: 'unit_thresholds' names {unknown_metrics}, which are not SpikeInterface quality "
                         f"metrics computed without principal components; choose from {columns}.")
    split = curation.get("split_units", {})
    if not isinstance(split, dict) or set(split) - set(SPLIT_DEFAULTS):
        raise ValueError(f"{what}: 'split_units' must be a dict with any of {sorted(SPLIT_DEFAULTS)} "
                         f"(e.g. {{}} for the defaults {SPLIT_DEFAULTS}), got {split!r}.")
    options = dict(SPLIT_DEFAULTS, **split)
    if not 0 < options["template_similarity"] <= 1 or not all(
        isinstance(options[k], int) and options[k] >= 1 for k in ("min_spikes", "channels", "features")
    ):
        raise ValueError(f"{what}: in 'split_units', 'template_similarity' is in (0, 1] and 'min_spikes', "
                         f"'channels', 'features' are integers >= 1; got {split!r}.")
    if not isinstance(curation.get("remove_redundant", False), bool):
        raise ValueError(f"{what}: 'remove_redundant' must be True or False.")


def quality_metric_columns() -> list[str]:
    """Columns of SpikeInterface's quality metrics table that need no principal components."""
    from spikeinterface.metrics.quality.quality_metrics import ComputeQualityMetrics, get_quality_pca_metric_list

    pca = set(get_quality_pca_metric_list())
    return [column for metric in ComputeQualityMetrics.metric_list if metric.metric_name not in pca
            for column in metric.metric_columns]


def quality_metrics_for(thresholds: dict) -> list:
    """SpikeInterface's quality metrics (their classes) that compute the columns named in ``thresholds``."""
    from spikeinterface.metrics.quality.quality_metrics import ComputeQualityMetrics

    return [metric for metric in ComputeQualityMetrics.metric_list if set(metric.metric_columns) & set(thresholds)]


def curate_annotations(annotations: Annotations, training_recording: BaseRecording, curation: dict,
                       folder: Path, job_kwargs: dict, seed: int = 0) -> Annotations:
    """``annotations`` (frames of ``training_recording``, the preprocessed training recording) after the
    ``curation`` steps; a report is written to ``folder / "annotation_curation.json"``. ``seed`` fixes the random
    spikes that SpikeInterface's sparsity and templates are estimated from and the chunks its noise levels are
    measured on."""
    report: dict = dict(units_before=int(annotations.num_units), spikes_before=int(len(annotations.sample_index)))
    analyzer = None
    if curation.get("split_units") is not None:
        options = dict(SPLIT_DEFAULTS, **curation["split_units"])
        analyzer = _analyzer(annotations, training_recording, job_kwargs, seed,
                             every_waveform_channels=options["channels"])
        annotations, splits = split_merged_units(annotations, analyzer, options)
        report["splits"] = splits
        _log_step("split", len(splits), "unit(s) holding spikes of unlike waveforms", [
            f"{split['unit']} -> {', '.join(f'{u} ({n} spikes)' for u, n in zip(split['into'], split['spikes']))}"
            for split in splits])
        # a new analyzer for the new units, or for the merges' sparsity overlaps (it holds k channels per unit)
        if splits or curation.get("merge_presets") or curation.get("remove_redundant"):
            analyzer = None
    if analyzer is None:
        analyzer = _analyzer(annotations, training_recording, job_kwargs, seed)
    # each annotated unit (after splits) -> the unit it ends in (None: removed)
    fate: dict = {unit_id: unit_id for unit_id in annotations.unit_ids}

    thresholds = curation.get("unit_thresholds", {})
    if thresholds:
        from spikeinterface.curation import threshold_metrics_label_units

        metrics_needed = quality_metrics_for(thresholds)  # only these, not the whole table
        for dependency in sorted({d for metric in metrics_needed for d in metric.depend_on}):
            options = dependency.split("|")  # "a|b": either extension will do
            if not set(options) & set(analyzer.get_loaded_extension_names()):
                analyzer.compute(options[0], **job_kwargs)
        analyzer.compute("quality_metrics", metric_names=[m.metric_name for m in metrics_needed], **job_kwargs)
        metrics = analyzer.get_extension("quality_metrics").get_data()
        # a metric the window is too short for (NaN, e.g. presence_ratio under 60 s) removes no unit
        labels = threshold_metrics_label_units(metrics, thresholds, nan_policy="ignore")["label"]
        failed = [unit_id for unit_id in analyzer.unit_ids if labels[unit_id] != "good"]
        report["quality_metrics"] = json.loads(metrics[list(thresholds)].to_json(orient="index"))
        report["failed_thresholds"] = [str(u) for u in failed]
        _remove(fate, failed)
        _log_step("removed", len(failed), "unit(s) failing unit_thresholds", [
            f"{u} ({', '.join(f'{m} {metrics.loc[u, m]:.3g}' for m in thresholds)})" for u in failed])

    merges = []
    if curation.get("merge_presets"):  # a unit removed above is not merged into a good one
        surviving = set(fate.values())
        analyzer = analyzer.select_units([unit_id for unit_id in analyzer.unit_ids if unit_id in surviving])
    for preset in curation.get("merge_presets", []):
        analyzer, groups = _merge_until_stable(analyzer, preset, curation.get("merge_steps_params", {}), job_kwargs)
        for group in groups:
            for unit_id in group[1:]:
                for old, new in fate.items():
                    if new == unit_id:
                        fate[old] = group[0]
        merges += [dict(preset=preset, units=[str(u) for u in group]) for group in groups]
    report["merges"] = merges
    _log_step("merged", sum(len(m["units"]) - 1 for m in merges), "unit(s) into others",
              [f"{m['units']} ({m['preset']})" for m in merges])

    if curation.get("remove_redundant", False):
        from spikeinterface.curation import remove_redundant_units

        surviving = set(fate.values())
        alive = [unit_id for unit_id in analyzer.unit_ids if unit_id in surviving]
        alive_analyzer = analyzer.select_units(alive)  # a unit removed above cannot stand in for its duplicate
        kept = set(remove_redundant_units(alive_analyzer, remove_strategy="minimum_shift").unit_ids)
        redundant = [unit_id for unit_id in alive if unit_id not in kept]
        report["redundant"] = [str(u) for u in redundant]
        _remove(fate, redundant)
        _log_step("removed", len(redundant), "redundant unit(s)", [str(u) for u in redundant])

    curated = _apply_fate(annotations, fate)
    report.update(units_after=int(curated.num_units), spikes_after=int(len(curated.sample_index)),
                  units={str(old): (None if new is None else str(new)) for old, new in fate.items()})
    logger.info("annotation curation: %d units, %d spikes -> %d units, %d spikes", report["units_before"],
                report["spikes_before"], curated.num_units, len(curated.sample_index))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "annotation_curation.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf8")
    return curated


def _analyzer(annotations: Annotations, training_recording: BaseRecording, job_kwargs: dict, seed: int,
              every_waveform_channels: int | None = None):
    """An in-memory sparse SortingAnalyzer of the annotations with noise levels and templates (from 500 random
    spikes of each unit); with ``every_waveform_channels`` k, each unit's k channels of largest amplitude only
    (SpikeInterface's ``best_channels`` sparsity) and the waveforms of every spike, which it keeps and computes the
    templates from (on the 60 s window of the ``long`` preset, 62 000 spikes at 384 channels, the curation's peak
    memory is 0.82 GB with 8 channels, 1.16 GB on the default sparsity)."""
    import spikeinterface.core as sic

    sorting = NumpySorting.from_samples_and_labels(
        [annotations.sample_index], [annotations.unit_ids[annotations.unit_index]],
        training_recording.get_sampling_frequency(), unit_ids=annotations.unit_ids,
    )
    every_waveform = every_waveform_channels is not None
    sparsity = dict(method="best_channels", num_channels=every_waveform_channels) if every_waveform else None
    analyzer = sic.create_sorting_analyzer(sorting, training_recording, sparse=True, format="memory", seed=seed,
                                           sparsity_kwargs=sparsity, job_kwargs=job_kwargs)
    spikes = dict(method="all") if every_waveform else dict(seed=seed)
    steps = dict(random_spikes=spikes, noise_levels=dict(random_slices_kwargs=dict(seed=seed)))
    if every_waveform:
        steps["waveforms"] = dict(ms_before=1.0, ms_after=1.5)
    analyzer.compute(dict(steps, templates={}), **job_kwargs)
    return analyzer


def split_merged_units(annotations: Annotations, analyzer, options: dict) -> tuple[Annotations, list]:
    """``annotations`` with each unit whose waveforms form clusters of unlike shape split into one unit per cluster
    (``cluster_waveforms``; the largest part keeps the unit's id, the others get new ids), and the splits
    (``unit``, ``into`` its parts' ids, their ``spikes``). ``analyzer`` holds the waveform of every annotated spike
    (``_analyzer(..., every_waveform_channels=options["channels"])``); ``options`` as ``SPLIT_DEFAULTS``. Without a
    split, the annotations are returned as given."""
    waveforms = analyzer.get_extension("waveforms")
    unit_index = annotations.unit_index.copy()
    unit_ids = list(annotations.unit_ids)
    splits = []
    for u, unit_id in enumerate(annotations.unit_ids):
        spikes = np.flatnonzero(annotations.unit_index == u)  # in time order, as the analyzer's
        if len(spikes) < 2 * options["min_spikes"]:
            continue
        labels = cluster_waveforms(waveforms.get_waveforms_one_unit(unit_id, force_dense=False), options)
        if labels.max() == 0:
            continue
        new_ids = _new_unit_ids(unit_ids, unit_id, int(labels.max()))
        for part, new_id in enumerate(new_ids, start=1):
            unit_index[spikes[labels == part]] = len(unit_ids)
            unit_ids.append(new_id)
        splits.append(dict(unit=str(unit_id), into=[str(i) for i in [unit_id, *new_ids]],
                           spikes=np.bincount(labels).tolist()))
    if not splits:
        return annotations, splits
    dtype = annotations.unit_ids.dtype
    ids = np.asarray(unit_ids, dtype=dtype) if dtype.kind in "iu" else np.asarray([str(i) for i in unit_ids])
    return Annotations(annotations.sample_index, unit_index, ids, annotations.source + " (split)",
                       annotations.uncertain), splits


def cluster_waveforms(waveforms: np.ndarray, options: dict) -> np.ndarray:
    """Cluster labels (0 the largest cluster) of one unit's ``waveforms`` (spikes, samples, channels): the
    ``options["features"]`` principal components of its ``options["channels"]`` strongest channels clustered with
    ISO-SPLIT (the ``isosplit6`` package, a clusterer of SpikeInterface's ``local_feature_clustering``), then the
    clusters whose mean waveforms are alike (cosine similarity >= ``options["template_similarity"]``) joined, most
    alike first, and a cluster under ``min_spikes`` joined to the most alike."""
    import isosplit6

    count = len(waveforms)
    strongest = np.argsort(np.abs(waveforms.mean(0)).max(0))[::-1][: options["channels"]]
    x = waveforms[:, :, strongest].reshape(count, -1).astype(np.float64)
    centred = x - x.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # principal axes, ascending variance (4x faster than an SVD)
    features = centred @ vectors[:, ::-1][:, : options["features"]]
    labels = isosplit6.isosplit6(features)
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]

    def similarities() -> np.ndarray:
        means = np.stack([x[g].mean(0) for g in groups])
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        similarity = means @ means.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity

    def join(i: int, j: int) -> None:
        i, j = min(i, j), max(i, j)  # popping the later one leaves the earlier one's index
        groups[i] = np.concatenate([groups[i], groups.pop(j)])

    while len(groups) > 1:  # the two most alike clusters joined, while alike
        similarity = similarities()
        i, j = np.unravel_index(np.argmax(similarity), similarity.shape)
        if similarity[i, j] < options["template_similarity"]:
            break
        join(int(i), int(j))
    while len(groups) > 1 and min(len(g) for g in groups) < options["min_spikes"]:  # a small one to the most alike
        j = int(np.argmin([len(g) for g in groups]))
        join(int(np.argmax(similarities()[j])), j)
    labels = np.zeros(count, dtype=np.int64)
    for k, group in enumerate(sorted(groups, key=len, reverse=True)):
        labels[group] = k
    return labels


def _new_unit_ids(unit_ids: list, unit_id, count: int) -> list:
    """``count`` new unit ids for the parts split from ``unit_id``: the next integers after the largest id for
    integer ids, else ``"<unit_id>-split<k>"`` (unique among ``unit_ids``)."""
    if all(isinstance(i, (int, np.integer)) for i in unit_ids):
        top = max(int(i) for i in unit_ids)
        return [top + k for k in range(1, count + 1)]
    taken, new, k = {str(i) for i in unit_ids}, [], 1
    while len(new) < count:
        if f"{unit_id}-split{k}" not in taken:
            new.append(f"{unit_id}-split{k}")
        k += 1
    return new


def _merge_until_stable(analyzer, preset: str, steps_params: dict, job_kwargs: dict):
    """Merge the unit groups that SpikeInterface's ``compute_merge_unit_groups`` proposes with ``preset`` (each
    group into its first unit), again until it proposes none; returns the merged analyzer and the groups."""
    from spikeinterface.curation import compute_merge_unit_groups

    done = []
    while analyzer.get_num_units() > 1:
        groups = compute_merge_unit_groups(analyzer, preset=preset, steps_params=steps_params or None,
                                           force_copy=False, **job_kwargs)
        mergeable = analyzer.are_units_mergeable(groups, merging_mode="soft", sparsity_overlap=0.75) if groups else {}
        order = {unit_id: i for i, unit_id in enumerate(analyzer.unit_ids)}  # each group keeps its first unit's id
        groups = [sorted(group, key=order.__getitem__) for group, ok in mergeable.items() if ok]
        if not groups:
            break
        analyzer = analyzer.merge_units(groups, merging_mode="soft", new_id_strategy="take_first", **job_kwargs)
        done += groups
    return analyzer, done


def _remove(fate: dict, unit_ids) -> None:
    gone = set(unit_ids)
    for old, new in fate.items():
        if new in gone:
            fate[old] = None


def _log_step(verb: str, count: int, what: str, details: list[str]) -> None:
    logger.info("annotation curation: %s %d %s%s", verb, count, what, f": {'; '.join(details)}" if details else "")


def _apply_fate(annotations: Annotations, fate: dict) -> Annotations:
    """The annotations with each unit's spikes given to the unit it ends in, removed units' spikes dropped, and
    the surviving units in their first order (spikes that merging made duplicates are kept: training reads
    positives by sample)."""
    kept = {v for v in fate.values() if v is not None}
    survivors = [u for u in annotations.unit_ids if u in kept]
    index_of = {u: i for i, u in enumerate(survivors)}
    remap = np.array([index_of[fate[u]] if fate[u] is not None else -1 for u in annotations.unit_ids], dtype=np.int64)
    return remap_units(annotations, remap, np.asarray(survivors, dtype=annotations.unit_ids.dtype),
                       source=annotations.source + " (curated)")
