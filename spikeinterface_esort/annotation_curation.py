"""Annotation curation: the annotated units cleaned with SpikeInterface's curation before training.

A teacher sorter's units on a short window carry its errors: one neuron split into several units, duplicated
units, noise or contaminated units. By default (``annotation_curation="auto"``) a teacher sorter's units with an
SNR of 3 or less are removed (``TEACHER_CURATION``) and a saved sorting is used as given. The annotations are read
as a sorting of the (preprocessed) training recording and cleaned, in this order, by SpikeInterface's own tools:

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

CURATION_KEYS = ("merge_presets", "merge_steps_params", "unit_thresholds", "remove_redundant")
# annotation_curation="auto" for a teacher sorter's annotations: its noise units (SNR 3 or less) removed
# (measured across the benchmark presets: docs/real-data.md)
TEACHER_CURATION = {"unit_thresholds": {"snr": {"greater": 3.0}}}


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
    import spikeinterface.core as sic

    sorting = NumpySorting.from_samples_and_labels(
        [annotations.sample_index], [annotations.unit_ids[annotations.unit_index]],
        training_recording.get_sampling_frequency(), unit_ids=annotations.unit_ids,
    )
    analyzer = sic.create_sorting_analyzer(sorting, training_recording, sparse=True, format="memory", seed=seed)
    analyzer.compute(dict(random_spikes=dict(seed=seed), noise_levels=dict(random_slices_kwargs=dict(seed=seed)),
                          templates={}), **job_kwargs)
    # each annotated unit -> the unit it ends in (None: removed)
    fate: dict = {unit_id: unit_id for unit_id in annotations.unit_ids}
    report: dict = dict(units_before=int(annotations.num_units), spikes_before=int(len(annotations.sample_index)))

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
    logger.info("annotation curation: %d units, %d spikes -> %d units, %d spikes", annotations.num_units,
                len(annotations.sample_index), curated.num_units, len(curated.sample_index))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "annotation_curation.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf8")
    return curated


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
