"""The long-recording tools at a small size: the `long` preset's Neuropixels recording, scores per time bin,
cost against length, the settings study's candidates, and the fixed-size training epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spikeinterface_esort.tools.benchmark import PRESETS, preset_data, time_bins
from spikeinterface_esort.tools.datasets import LONG_INT16_GAIN_UV, generate_long_dataset, neuropixels_1_probe
from spikeinterface_esort.training import WindowSampler


def test_long_preset_is_an_int16_neuropixels_recording_with_drift(tmp_path):
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    recording, truth = generate_long_dataset(tmp_path, duration_s=4.0, num_units=6, num_channels=64, drift_um=25.0)
    assert recording.get_dtype() == np.int16 and recording.get_num_channels() == 64
    assert np.allclose(recording.get_channel_gains(), LONG_INT16_GAIN_UV)
    # probeinterface's own NP1000 geometry, bank 0, channel i = electrode i
    np1000 = build_neuropixels_probe("NP1000")
    np.testing.assert_array_equal(recording.get_channel_locations(), np1000.contact_positions[:64])
    # firing rates within 1-20 Hz (4 s: a unit fires 0 to about 20 * 4 + a few times)
    counts = truth.count_num_spikes_per_unit(outputs="array")
    assert len(counts) == 6 and counts.max() <= 20 * 4 * 1.5
    # the traces are in uV after the gain: 7 uV noise, spikes well above it
    traces = recording.get_traces(start_frame=0, end_frame=30000, return_in_uV=True)
    assert 5.0 < np.median(traces.std(axis=0)) < 15.0
    again, _ = generate_long_dataset(tmp_path, duration_s=4.0, num_units=6, num_channels=64, drift_um=25.0)
    assert again.get_total_duration() == 4.0  # reloaded, not generated again
    with pytest.raises(ValueError, match="384"):
        neuropixels_1_probe(385)


def test_long_preset_scores_after_esorts_default_window(tmp_path, monkeypatch):
    """The preset's annotation window is the window esort takes with no parameters (half of a short recording)."""
    monkeypatch.setitem(PRESETS, "long", PRESETS["long"].__class__(
        PRESETS["long"].description, 600.0,
        lambda folder, duration_s, seed: generate_long_dataset(folder, duration_s, num_units=5, num_channels=32,
                                                               seed=seed),
        annotation_s=PRESETS["long"].annotation_s, annotation_pieces=PRESETS["long"].annotation_pieces))
    data, description = preset_data("long", tmp_path, duration_s=6.0)
    assert data.annotation_s == 3.0 and data.held_out_start_frame == 90000 and "Neuropixels 1.0" in description
    assert data.annotation_pieces == 1 and data.excluded_frames == ()
    assert PRESETS["long"].annotation_s(600.0) == 60.0  # at most 60 s
    assert PRESETS["long"].annotation_pieces(600.0, 60.0) == 12  # spread, as esort spreads its window


def test_spread_annotation_window_is_not_scored():
    """Spikes in the pieces of a spread annotation window count for no sorter; those between the pieces do."""
    from spikeinterface.core import NoiseGeneratorRecording, NumpySorting

    from spikeinterface_esort.tools.benchmark import BenchmarkData
    from spikeinterface_esort.tools.datasets import held_out_comparison

    fs = 1000.0
    recording = NoiseGeneratorRecording(num_channels=2, sampling_frequency=fs, durations=[600.0])
    truth_frames = np.arange(500, 600000, 1000)  # one spike a second
    truth = NumpySorting.from_samples_and_labels([truth_frames], [np.zeros(len(truth_frames), dtype=int)], fs)
    data = BenchmarkData(recording, truth, None, 60.0, annotation_pieces=6)
    assert data.pieces_s()[-1] == (590.0, 600.0) and data.held_out_start_frame == 10000
    assert data.excluded_frames[0] == (118000, 128000) and len(data.excluded_frames) == 5
    # a sorter that misses every spike inside the pieces and finds every other one
    inside = np.zeros(len(truth_frames), dtype=bool)
    for a, b in data.excluded_frames:
        inside |= (truth_frames >= a) & (truth_frames < b)
    found = truth_frames[~inside]
    sorting = NumpySorting.from_samples_and_labels([found], [np.zeros(len(found), dtype=int)], fs)
    scored = held_out_comparison(sorting, truth, data.held_out_start_frame, 600000, data.excluded_frames)
    assert scored.get_performance()["accuracy"].iloc[0] == 1.0
    unscored = held_out_comparison(sorting, truth, data.held_out_start_frame, 600000)
    assert unscored.get_performance()["accuracy"].iloc[0] < 0.95


def test_time_bins_cover_the_held_out_part():
    bins = time_bins(90000, 30000 * 200, 30000.0, 60.0)
    assert bins[0][0] == 90000 and bins[-1][1] == 30000 * 200
    assert all(a[1] == b[0] for a, b in zip(bins, bins[1:]))
    assert [round((e - s) / 30000) for s, e in bins] == [60, 60, 77]  # a short last bin joins the one before
    assert time_bins(0, 30000 * 10, 30000.0, 60.0) == [(0, 300000)]


def test_an_epoch_draws_a_fixed_number_of_spikes():
    spikes = np.arange(1000, 30000, 100)  # 290 spikes of one unit
    sampler = WindowSampler(spikes, np.zeros(len(spikes), dtype=np.int64), 1, 0, 40000, 60, 5)
    rng = np.random.default_rng(0)
    centres, targets = sampler.draw(rng, 1, 1.0, num_spikes=1000)  # more than there are: each spike 3-4 times
    positives = centres[targets[:, 0] == 1]
    assert len(centres) == 2000 and len(positives) == 1000
    nearest = spikes[np.abs(positives[:, None] - spikes[None, :]).argmin(axis=1)]
    assert set(np.bincount(np.searchsorted(spikes, nearest), minlength=len(spikes))) <= {3, 4}
    centres, targets = sampler.draw(rng, 1, 1.0, num_spikes=100)  # fewer: 100 different spikes
    positives = centres[targets[:, 0] == 1]
    assert len(positives) == 100
    assert len(np.unique(spikes[np.abs(positives[:, None] - spikes[None, :]).argmin(axis=1)])) == 100
    centres, targets = sampler.draw(rng, 1, 1.0)  # None: every spike once, as published
    assert (targets[:, 0] == 1).sum() == len(spikes)


def test_settings_study_candidates():
    from spikeinterface_esort import PUBLISHED_PARAMS
    from spikeinterface_esort.tools.settings_study import candidate_params

    assert candidate_params("published") == PUBLISHED_PARAMS and candidate_params("defaults") == {}
    assert candidate_params("inference_stride=4,spatial_radius_um=null") == dict(inference_stride=4,
                                                                                spatial_radius_um=None)
    assert candidate_params('annotation_curation={"merge_presets":["slay"],"remove_redundant":true},unit_balance=0') == \
        dict(annotation_curation=dict(merge_presets=["slay"], remove_redundant=True), unit_balance=0)
    with pytest.raises(ValueError, match="not an esort parameter"):
        candidate_params("no_such_parameter=3")


def test_cost_against_length(tmp_path):
    """Two lengths of a small preset, SpikeInterface's 'simple' sorter in fresh processes: a row per length with
    wall time and peak RSS, a straight-line fit, the table and the plot."""
    from spikeinterface_esort.tools import scaling

    folder = tmp_path / "scaling"
    assert scaling.main(["--preset", "small", "--lengths", "4", "8", "--sorters", "simple", "--folder", str(folder)]) == 0
    table = pd.read_csv(folder / "scaling.csv")
    assert list(table["length_s"]) == [4.0, 8.0] and (table["run_time_s"] > 0).all()
    assert (table["peak_rss_mb"] >= table["baseline_rss_mb"]).all() and (table["peak_rss_mb"] > 50).all()
    report = (folder / "scaling.md").read_text()
    assert "| simple |" in report and "s per minute of recording" in report
    assert (folder / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    fits = scaling.fit_lines(pd.DataFrame(dict(sorter=["a"] * 3, length_s=[60.0, 120.0, 300.0],
                                               run_time_s=[50.0, 60.0, 90.0])))
    assert fits.loc[0, "fixed_s"] == pytest.approx(40.0) and fits.loc[0, "s_per_minute"] == pytest.approx(10.0)
