"""The FFT bandpass gives the traces of SpikeInterface's sosfiltfilt bandpass and common median reference,
whatever the chunking; and a sort with either filter finds the same spikes."""

from __future__ import annotations

import numpy as np
import pytest
import spikeinterface.preprocessing as spre
from spikeinterface.core import NumpyRecording

from spikeinterface_esort.parameters import default_params
from spikeinterface_esort.preprocessing import (FFTBandpassRecording, estimate_noise_levels, in_memory_recording,
                                                median_reference_, preprocess)
from spikeinterface_esort.training import load_traces


def sosfiltfilt_reference(recording, median_reference=True):
    """SpikeInterface's chain with a margin long enough (100 ms) that its chunks are exact."""
    out = spre.bandpass_filter(recording, freq_min=300.0, freq_max=6000.0, dtype="float32", margin_ms=100.0)
    return spre.common_reference(out, reference="global", operator="median") if median_reference else out


@pytest.mark.parametrize("median_reference", [True, False])
def test_fft_bandpass_equals_sosfiltfilt(small_recording, median_reference):
    recording = small_recording[0]
    fft = FFTBandpassRecording(recording, 300.0, 6000.0, median_reference)
    expected = sosfiltfilt_reference(recording, median_reference).get_traces(start_frame=60000, end_frame=150000)
    noise = np.median(np.abs(expected), axis=0) / 0.6745
    got = fft.get_traces(start_frame=60000, end_frame=150000)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.max(np.abs(got - expected) / noise) < 1e-3  # of the noise level
    # a subset of channels: the same columns (the median still taken over every channel)
    subset = fft.get_traces(start_frame=60000, end_frame=61000, channel_ids=recording.channel_ids[[1, 5]])
    np.testing.assert_allclose(subset, got[:1000, [1, 5]], atol=1e-4 * noise.max())


def test_fft_bandpass_does_not_depend_on_the_chunks(small_recording):
    fft = preprocess(small_recording[0], dict(default_params(), filter_method="fft"))
    assert isinstance(fft, FFTBandpassRecording)
    num = fft.get_num_samples()
    whole = fft.get_traces()
    noise = np.median(np.abs(whole), axis=0) / 0.6745
    for size in (7, 1000, 29999):  # odd sizes, some shorter than the margin
        pieces = np.concatenate([fft.get_traces(start_frame=s, end_frame=min(s + size, num)) for s in range(0, min(num, 40 * size), size)])
        assert np.max(np.abs(pieces - whole[: pieces.shape[0]]) / noise) < 1e-3, size
    assert np.isfinite(whole).all()
    # the segment's ends (odd extension, as filtfilt) stay at the level of the signal
    assert np.max(np.abs(whole[:300]) / noise) < 20 and np.max(np.abs(whole[-300:]) / noise) < 20


def test_fft_bandpass_removes_offsets_and_is_serialisable(tmp_path):
    rng = np.random.default_rng(0)
    traces = (rng.standard_normal((30000, 4)) * 10 + np.array([1000.0, -500.0, 0.0, 30.0])).astype("int16")
    recording = NumpyRecording(traces, 30000.0)
    fft = FFTBandpassRecording(recording, 300.0, 6000.0, median_reference=False)
    filtered = fft.get_traces(start_frame=3000, end_frame=27000)
    assert np.all(np.abs(filtered.mean(axis=0)) < 0.5)  # DC offsets of up to 1000 removed
    from spikeinterface.core import load

    saved = fft.save(folder=tmp_path / "saved", progress_bar=False)
    np.testing.assert_allclose(saved.get_traces(start_frame=3000, end_frame=27000), filtered, atol=1e-3)
    reloaded = load(fft.to_dict())
    np.testing.assert_array_equal(reloaded.get_traces(start_frame=3000, end_frame=27000), filtered)


@pytest.mark.parametrize("channels", [1, 2, 7, 384])
def test_median_reference_equals_numpy_median(channels):
    traces = np.random.default_rng(channels).standard_normal((2500, channels)).astype("float32")  # 3 sorted blocks
    expected = traces - np.median(traces, axis=1, keepdims=True)
    np.testing.assert_array_equal(median_reference_(traces.copy()), expected)
    np.testing.assert_array_equal(median_reference_(traces.copy(), threads=3), expected)  # blocks of samples


def test_fft_bandpass_with_threads_gives_the_same_traces(small_recording):
    from spikeinterface_esort.preprocessing import preprocessing_threads

    fft = FFTBandpassRecording(small_recording[0], 300.0, 6000.0, median_reference=True)
    alone = fft.get_traces(start_frame=1000, end_frame=40000)
    with preprocessing_threads(2):
        together = fft.get_traces(start_frame=1000, end_frame=40000)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5 * np.abs(alone).max())


def test_unknown_filter_method_is_refused(small_recording, tmp_path):
    import spikeinterface.sorters as ss

    import spikeinterface_esort  # noqa: F401

    with pytest.raises(ValueError, match="filter_method"):
        ss.run_sorter("esort", small_recording[0], folder=tmp_path / "out", filter_method="lfilter")


def test_a_model_sorts_the_same_spikes_with_either_filter(small_recording, small_esort_run):
    import copy

    from spikeinterface_esort import ESortModel

    recording = small_recording[0]
    folder, with_fft = small_esort_run
    model = ESortModel.load(folder)
    assert model.preprocessing["filter_method"] == "fft"  # the default, recorded with the model
    other = copy.copy(model)
    other.preprocessing = dict(model.preprocessing, filter_method="sosfiltfilt")
    with_sosfiltfilt = other.sort(recording)
    for unit_id in with_fft.unit_ids:
        a, b = with_fft.get_unit_spike_train(unit_id), with_sosfiltfilt.get_unit_spike_train(unit_id)
        assert len(a) > 0
        assert len(np.intersect1d(a, b)) >= 0.99 * max(len(a), len(b)), unit_id


@pytest.mark.parametrize("median_reference", [True, False])
def test_fft_bandpass_on_the_device_equals_the_cpu_filter(small_recording, median_reference):
    """The filter a GPU runs (torch FFT and sort), checked here on the CPU: the traces of ``get_traces``, in the
    middle and at both ends of the segment (odd extension), from float32 and int16 raw traces, odd channel count."""
    import torch

    recording = small_recording[0]
    raw = recording.get_traces()
    for source in (recording, NumpyRecording((raw[:, :7] * 50).astype("int16"), recording.get_sampling_frequency())):
        fft = FFTBandpassRecording(source, 300.0, 6000.0, median_reference)
        num = fft.get_num_samples()
        for start, end in ((60000, 90000), (0, 5000), (num - 5000, num), (100, 100)):
            expected = fft.get_traces(start_frame=start, end_frame=end)
            got = fft.get_traces_on_device(0, start, end, torch.device("cpu"))
            assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
            np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max(initial=1.0))


def test_a_window_read_into_memory_is_the_preprocessed_recording(small_recording):
    """The training window, read once (noise-normalised, float16), is given to SpikeInterface's tools as a recording
    with the preprocessed recording's probe and units: its traces are the preprocessed ones to float16 rounding."""
    preprocessed = preprocess(small_recording[0], default_params())
    window = preprocessed.frame_slice(30000, 90000)
    noise = estimate_noise_levels(window, seed=0)
    traces = load_traces(window, 0, window.get_num_samples(), noise, chunk_size=20000, progress_bar=False, n_jobs=2)
    memory = in_memory_recording(traces, noise, window)
    assert memory.get_num_samples() == window.get_num_samples() and memory.get_dtype() == np.float32
    np.testing.assert_array_equal(memory.get_channel_locations(), window.get_channel_locations())
    assert memory.has_probe() == window.has_probe()
    expected = window.get_traces(start_frame=1000, end_frame=9000)
    got = memory.get_traces(start_frame=1000, end_frame=9000)
    assert np.max(np.abs(got - expected) / noise) < 2e-2  # float16: 11 bits over spikes of tens of noise levels
    assert np.median(np.abs(got - expected) / noise) < 1e-3
    with pytest.raises(ValueError, match="do not fit"):
        in_memory_recording(traces[:-1], noise, window)
