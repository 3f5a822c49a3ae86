"""Ground-truth recordings from SpikeInterface's generators, and held-out scoring.

Used by the demo (``python -m spikeinterface_esort demo``); the same calls a user
would make: ``generate_ground_truth_recording``, ``save``, ``compare_sorter_to_ground_truth``.
"""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
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
    noise_level_uv: float = 5.0,
    layout: str = "grid",
) -> tuple[BaseRecording, BaseSorting]:
    """A ground-truth recording, saved (binary) under ``folder``: ``folder/recording`` and
    ``folder/ground_truth``. Reloaded if already there with the same arguments. ``noise_level_uv`` is the
    generator's noise level (its default, 5 uV). ``layout``: see ``make_probe``."""
    folder = Path(folder)
    spec = dict(kind="ground_truth", num_channels=num_channels, num_units=num_units, duration_s=duration_s,
                sampling_frequency=sampling_frequency, num_segments=num_segments, seed=seed,
                noise_level_uv=noise_level_uv)
    if layout != "grid":
        spec["layout"] = layout
    existing = _load_saved(folder, spec)
    if existing is not None:
        return existing
    recording, sorting = generate_ground_truth_recording(
        durations=[duration_s] * num_segments,
        sampling_frequency=sampling_frequency,
        num_channels=num_channels,
        num_units=num_units,
        probe=make_probe(layout, num_channels),
        noise_kwargs=dict(noise_levels=noise_level_uv, strategy="on_the_fly"),
        seed=seed,
    )
    return _save(folder, recording, sorting, spec)


LAYOUTS = ("grid", "np1", "2col")


def make_probe(layout: str, num_channels: int):
    """An explicit probe (no download): 'grid' is 4 aligned columns (1 column under 8 channels) at 20 um
    pitch, the layout of the tests; 'np1' is Neuropixels-1.0-like: 4 staggered columns 16 um apart, rows
    every 20 um with two contacts each (384 channels: 3.84 mm); '2col' is 2 aligned columns 32 um apart, rows
    every 20 um (a layout no backbone ships for)."""
    import numpy as np
    from probeinterface import generate_multi_columns_probe

    if layout == "grid":
        columns = 4 if num_channels >= 8 else 1
        probe = generate_multi_columns_probe(
            num_columns=columns, num_contact_per_column=num_channels // columns, xpitch=20, ypitch=20,
            contact_shapes="circle", contact_shape_params={"radius": 6},
        )
    elif layout == "np1":
        if num_channels % 4:
            raise ValueError(f"the np1 layout needs a multiple of 4 channels, got {num_channels}")
        probe = generate_multi_columns_probe(
            num_columns=4, num_contact_per_column=num_channels // 4, xpitch=16, ypitch=40,
            y_shift_per_column=[20, 0, 20, 0], contact_shapes="square", contact_shape_params={"width": 12},
        )
    elif layout == "2col":
        if num_channels % 2:
            raise ValueError(f"the 2col layout needs an even number of channels, got {num_channels}")
        probe = generate_multi_columns_probe(
            num_columns=2, num_contact_per_column=num_channels // 2, xpitch=32, ypitch=20,
            contact_shapes="square", contact_shape_params={"width": 12},
        )
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


DRIFT_MODES = ("static", "zigzag", "bumps")


def generate_drifting_dataset(
    folder: str | Path,
    drift_mode: str = "zigzag",
    num_units: int = 12,
    duration_s: float = 90.0,
    num_columns: int = 4,
    num_rows: int = 8,
    drift_um: float = 15.0,
    seed: int = 0,
) -> tuple[BaseRecording, BaseSorting]:
    """A recording from ``generate_drifting_recording`` on an explicit ``num_columns`` x ``num_rows``
    probe (20 um pitch), saved under ``folder``. ``drift_mode`` 'static' is the same neurons without
    motion; 'zigzag' moves the probe +-``drift_um`` with a 30 s period from t=0; 'bumps' jumps by up
    to +-``drift_um`` every 10-30 s. Reloaded if already there with the same arguments."""
    import numpy as np
    from probeinterface import generate_multi_columns_probe
    from spikeinterface.generation import generate_drifting_recording

    if drift_mode not in DRIFT_MODES:
        raise ValueError(f"drift_mode must be one of {DRIFT_MODES}, got {drift_mode!r}")
    folder = Path(folder)
    spec = dict(kind="drifting", drift_mode=drift_mode, num_units=num_units, duration_s=duration_s,
                num_columns=num_columns, num_rows=num_rows, drift_um=drift_um, seed=seed)
    existing = _load_saved(folder, spec)
    if existing is not None:
        return existing
    probe = generate_multi_columns_probe(
        num_columns=num_columns, num_contact_per_column=num_rows, xpitch=20, ypitch=20,
        contact_shapes="circle", contact_shape_params={"radius": 6},
    )
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    motion = dict(drift_mode="bump" if drift_mode == "bumps" else "zigzag", non_rigid_gradient=None,
                  t_start_drift=0.0, t_end_drift=None, period_s=30, bump_interval_s=(10.0, 30.0))
    static, drifting, sorting = generate_drifting_recording(
        num_units=num_units, duration=duration_s, probe=probe, seed=seed,
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, drift_um], drift_stop_um=[0, -drift_um],
            drift_step_um=1, motion_list=[motion],
        ),
    )
    return _save(folder, static if drift_mode == "static" else drifting, sorting, spec)


LONG_INT16_GAIN_UV = 0.5  # uV per bit of the saved long recording: quantisation noise 0.14 uV rms against 7 uV


def neuropixels_1_probe(num_channels: int = 384):
    """probeinterface's Neuropixels 1.0 probe (``build_neuropixels_probe("NP1000")``: its contact geometry),
    restricted to the ``num_channels`` contacts of bank 0 in their recording-channel order (channel i is
    electrode i, as SpikeGLX and Open Ephys save a probe with its default IMRO table)."""
    import numpy as np
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    probe = build_neuropixels_probe("NP1000")
    if not 1 <= num_channels <= 384:
        raise ValueError(f"a Neuropixels 1.0 probe records 1 to 384 channels at once, got {num_channels}")
    probe = probe.get_slice(np.arange(num_channels))
    probe.set_device_channel_indices(np.arange(num_channels))
    return probe


def generate_long_dataset(
    folder: str | Path,
    duration_s: float = 600.0,
    num_units: int = 80,
    num_channels: int = 384,
    firing_rates_hz: tuple[float, float] = (1.0, 20.0),
    noise_level_uv: float = 7.0,
    drift_um: float = 25.0,
    seed: int = 0,
    n_jobs: int = 1,
    progress_bar: bool = False,
) -> tuple[BaseRecording, BaseSorting]:
    """A long Neuropixels 1.0 recording from ``generate_drifting_recording``, saved as int16 under ``folder``
    (``LONG_INT16_GAIN_UV`` uV per bit; 600 s of 384 channels take 13.8 GB).

    ``neuropixels_1_probe(num_channels)``; ``num_units`` units with firing rates uniform in ``firing_rates_hz``;
    spatially correlated noise of ``noise_level_uv`` (25 um decay); a slow rigid drift along the probe,
    linear from 0 to ``-drift_um`` um over the whole recording (SpikeInterface's 'zigzag' motion with a period
    of 4 durations, which is a linear ramp over its first quarter). Reloaded if already there with the same
    arguments."""
    from spikeinterface.generation import generate_drifting_recording

    folder = Path(folder)
    spec = dict(kind="long", duration_s=duration_s, num_units=num_units, num_channels=num_channels,
                firing_rates_hz=list(firing_rates_hz), noise_level_uv=noise_level_uv, drift_um=drift_um, seed=seed,
                dtype="int16", gain_uv=LONG_INT16_GAIN_UV)
    existing = _load_saved(folder, spec)
    if existing is not None:
        return existing
    motion = dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None,
                  period_s=4.0 * duration_s)
    _, drifting, sorting = generate_drifting_recording(
        num_units=num_units, duration=duration_s, probe=neuropixels_1_probe(num_channels), seed=seed,
        generate_sorting_kwargs=dict(firing_rates=tuple(firing_rates_hz), refractory_period_ms=4.0),
        generate_noise_kwargs=dict(noise_levels=(noise_level_uv, noise_level_uv), spatial_decay=25.0),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, drift_um], drift_stop_um=[0, -drift_um],
            drift_step_um=1, motion_list=[motion],
        ),
    )
    return _save_int16(folder, drifting, sorting, spec, n_jobs, progress_bar)


def corpus_spec(seed: int, num_channels: int, duration_s: float = 20.0) -> dict:
    """The generator settings of one pretraining-corpus recording, drawn from ``seed``: noise 3-15 uV, firing rates
    from 1-3 Hz up to 8-30 Hz, 0.15-0.5 units per channel, a rigid zigzag drift of 0-20 um, and templates of
    varied widths (repolarisation and recovery times scaled by 0.8-1.3), amplitudes and spatial decays."""
    rng = np.random.default_rng(seed)
    width = float(rng.uniform(0.8, 1.3))
    return dict(
        kind="corpus", seed=int(seed), num_channels=int(num_channels), duration_s=float(duration_s),
        noise_level_uv=round(float(rng.uniform(3.0, 15.0)), 2),
        firing_rates_hz=[round(float(rng.uniform(1.0, 3.0)), 2), round(float(rng.uniform(8.0, 30.0)), 2)],
        num_units=max(2, int(round(rng.uniform(0.15, 0.5) * num_channels))),
        drift_um=round(float(rng.uniform(0.0, 20.0)), 1),
        drift_period_s=round(float(rng.uniform(0.5, 2.0) * duration_s), 1),
        unit_params=dict(
            alpha=[round(float(rng.uniform(50.0, 150.0)), 1), round(float(rng.uniform(300.0, 700.0)), 1)],
            depolarization_ms=[round(0.09 * width, 3), round(0.14 * width, 3)],
            repolarization_ms=[round(0.5 * width, 3), round(0.8 * width, 3)],
            recovery_ms=[round(1.0 * width, 3), round(1.5 * width, 3)],
            spatial_decay=[round(float(rng.uniform(8.0, 15.0)), 1), round(float(rng.uniform(30.0, 60.0)), 1)],
        ),
        dtype="int16", gain_uv=LONG_INT16_GAIN_UV,
    )


def generate_corpus_dataset(folder: str | Path, layout: str, num_channels: int, seed: int, duration_s: float = 20.0,
                            n_jobs: int = 1) -> tuple[BaseRecording, BaseSorting, dict]:
    """One recording of a pretraining corpus (``corpus_spec(seed, ...)``) on ``make_probe(layout, num_channels)``,
    from ``generate_drifting_recording``, saved as int16 under ``folder``: (recording, ground truth, spec).
    Reloaded if already there with the same spec."""
    from spikeinterface.generation import generate_drifting_recording

    folder = Path(folder)
    spec = dict(corpus_spec(seed, num_channels, duration_s), layout=layout)
    existing = _load_saved(folder, spec)
    if existing is not None:
        return (*existing, spec)
    drift = spec["drift_um"]
    motion = dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None,
                  period_s=spec["drift_period_s"])
    _, drifting, sorting = generate_drifting_recording(
        num_units=spec["num_units"], duration=duration_s, probe=make_probe(layout, num_channels), seed=seed,
        generate_sorting_kwargs=dict(firing_rates=tuple(spec["firing_rates_hz"]), refractory_period_ms=4.0),
        generate_noise_kwargs=dict(noise_levels=(spec["noise_level_uv"],) * 2, spatial_decay=25.0),
        generate_templates_kwargs=dict(
            ms_before=1.5, ms_after=3.0, mode="ellipsoid",
            unit_params=dict({k: tuple(v) for k, v in spec["unit_params"].items()}, ellipse_shrink=(0.4, 1.0),
                             ellipse_angle=(0.0, 2 * np.pi)),
        ),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, drift], drift_stop_um=[0, -drift],
            drift_step_um=1, motion_list=[motion],
        ),
    )
    return (*_save_int16(folder, drifting, sorting, spec, n_jobs, progress_bar=False), spec)


def _load_saved(folder: Path, spec: dict) -> tuple[BaseRecording, BaseSorting] | None:
    """The dataset saved in ``folder`` if it was generated with ``spec``, else None."""
    spec_file = folder / "dataset.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return load(folder / "recording"), load(folder / "ground_truth")
    return None


def _save_int16(folder: Path, recording: BaseRecording, sorting: BaseSorting, spec: dict, n_jobs: int,
                progress_bar: bool) -> tuple[BaseRecording, BaseSorting]:
    """``_save`` for a recording in uV stored as int16 (``LONG_INT16_GAIN_UV`` uV per bit, gains set so that
    ``return_in_uV`` reads uV back), saved in 1 s chunks by ``n_jobs`` threads."""
    from spikeinterface.preprocessing import astype, scale

    as_int16 = astype(scale(recording, gain=1.0 / LONG_INT16_GAIN_UV), "int16", round=True)
    as_int16.set_channel_gains(LONG_INT16_GAIN_UV)
    as_int16.set_channel_offsets(0.0)
    recording = as_int16.save(folder=folder / "recording", overwrite=True, n_jobs=n_jobs, pool_engine="thread",
                              chunk_duration="1s", progress_bar=progress_bar)
    sorting = sorting.save(folder=folder / "ground_truth", overwrite=True)
    (folder / "dataset.json").write_text(json.dumps(spec, indent=2))  # written last: marks a complete dataset
    return recording, sorting


def _save(folder: Path, recording: BaseRecording, sorting: BaseSorting, spec: dict) -> tuple[BaseRecording, BaseSorting]:
    recording = recording.save(folder=folder / "recording", overwrite=True, n_jobs=1, progress_bar=False)
    sorting = sorting.save(folder=folder / "ground_truth", overwrite=True)
    (folder / "dataset.json").write_text(json.dumps(spec, indent=2))  # written last: marks a complete dataset
    return recording, sorting


def held_out_comparison(sorting: BaseSorting, truth: BaseSorting, start_frame: int, end_frame: int,
                        excluded: tuple = ()):
    """``compare_sorter_to_ground_truth`` (defaults) of ``sorting`` against ``truth`` on frames
    ``[start_frame, end_frame)`` of segment 0, without the spikes of either in the ``excluded`` (start, end)
    frame ranges (the pieces of a training window spread over the recording)."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    truth, sorting = truth.frame_slice(start_frame, end_frame), sorting.frame_slice(start_frame, end_frame)
    ranges = [(max(a, start_frame) - start_frame, min(b, end_frame) - start_frame) for a, b in excluded]
    ranges = [(a, b) for a, b in ranges if b > a]
    if ranges:
        truth, sorting = _without_ranges(truth, ranges), _without_ranges(sorting, ranges)
    return compare_sorter_to_ground_truth(truth, sorting)


def _without_ranges(sorting: BaseSorting, ranges: list[tuple[int, int]]) -> BaseSorting:
    """``sorting`` (one segment) without its spikes in the (start, end) frame ranges; every unit kept."""
    from spikeinterface.core import NumpySorting

    spikes = sorting.to_spike_vector()
    inside = np.zeros(len(spikes), dtype=bool)
    for start, end in ranges:
        inside |= (spikes["sample_index"] >= start) & (spikes["sample_index"] < end)
    return NumpySorting(spikes[~inside], sorting.get_sampling_frequency(), sorting.unit_ids)


def held_out_performance(sorting: BaseSorting, ground_truth: BaseSorting, start_frame: int,
                         excluded: tuple = ()) -> pd.DataFrame:
    """Per ground-truth unit accuracy, precision and recall of ``sorting`` on frames from ``start_frame``
    to the end of segment 0 (without the ``excluded`` frame ranges), with SpikeInterface's
    ``compare_sorter_to_ground_truth`` defaults."""
    # an explicit end: SpikeInterface's frame_slice(start, None) fails on a sorting with an empty unit
    end_frame = 1 + max([int(s.to_spike_vector()["sample_index"].max(initial=start_frame)) for s in (sorting, ground_truth)])
    comparison = held_out_comparison(sorting, ground_truth, start_frame, end_frame, excluded)
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



def sort_and_score(
    sorter_name: str,
    recording: BaseRecording,
    ground_truth: BaseSorting,
    folder: str | Path,
    held_out_start_frame: int,
    excluded: tuple = (),
    **sorter_params,
) -> tuple[BaseSorting, dict, pd.DataFrame]:
    """``run_sorter``, then the held-out per-unit performance (from ``held_out_start_frame``, without the
    ``excluded`` frame ranges) and its ``summarise``, with the wall time (s) of ``run_sorter`` as ``time_s``:
    (sorting, summary, per-unit performance)."""
    import time

    import spikeinterface.sorters as ss

    t0 = time.perf_counter()
    sorting = ss.run_sorter(sorter_name, recording, folder=folder, remove_existing_folder=True, verbose=False, **sorter_params)
    seconds = time.perf_counter() - t0
    performance = held_out_performance(sorting, ground_truth, held_out_start_frame, excluded)
    scores = summarise(performance)
    scores["time_s"] = seconds
    return sorting, scores, performance
