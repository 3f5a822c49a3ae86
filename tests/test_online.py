"""Online sorting: chunks pushed as an acquisition system delivers them give the offline spikes."""

import numpy as np
import pytest

from spikeinterface_esort import ESortModel, OnlineSorter
from spikeinterface_esort.ensemble import nearest_offsets
from spikeinterface_esort.online import stream

from conftest import needs_native_bfloat16


def model_in(folder, inference_dtype: str) -> ESortModel:
    """The model in ``folder``, evaluated in ``inference_dtype``. float32 is exact whatever the chunking; in bfloat16
    (the 'auto' precision on CPUs with AVX-512 BF16 or AMX) the sums are rounded in blocks that depend on the chunk's
    length, so a spike near a tie may move by one sample."""
    model = ESortModel.load(folder)
    model.params = dict(model.params, inference_dtype=inference_dtype)
    return model


@pytest.mark.parametrize("chunk_samples, seconds", [(7, 1.0), (1000, None), (30000, None)])
def test_concatenated_online_output_equals_the_offline_sort(small_recording, small_esort_run, chunk_samples, seconds):
    """Any chunking gives the offline spikes; 7-sample chunks (one network call each) on the first 1 s only."""
    recording = small_recording[0]
    if seconds is not None:
        recording = recording.frame_slice(0, int(seconds * recording.get_sampling_frequency()))
    model = model_in(small_esort_run[0], "float32")
    offline = model.sort(recording).to_spike_vector()
    traces = recording.get_traces(return_in_uV=False)
    sorter = OnlineSorter(model)
    online, seconds = stream(sorter, traces, chunk_samples)
    assert len(seconds) == -(-len(traces) // chunk_samples)
    np.testing.assert_array_equal(online.sample_index, offline["sample_index"])
    np.testing.assert_array_equal(online.unit_index, offline["unit_index"])
    # the buffer stays bounded: what the next decision needs, not the stream
    assert len(sorter._buffer) <= sorter.margin_before + sorter.lookahead_samples + chunk_samples + 2 * sorter.filter_margin


@needs_native_bfloat16
def test_bfloat16_online_output_is_the_offline_sort_up_to_rounding(small_recording, small_esort_run):
    recording = small_recording[0]
    model = model_in(small_esort_run[0], "bfloat16")
    offline = model.sort(recording).to_spike_vector()
    online, _ = stream(OnlineSorter(model), recording.get_traces(return_in_uV=False), 1000)
    assert abs(len(online.sample_index) - len(offline)) <= 0.01 * len(offline)
    same = nearest_offsets(offline["sample_index"], online.sample_index, delta=1)
    assert len(same) >= 0.99 * len(online.sample_index)  # every spike but a rare tie at the same sample or the next


def test_spikes_come_out_within_the_lookahead(small_recording, small_esort_run):
    recording = small_recording[0]
    model = ESortModel.load(small_esort_run[0])
    sorter = OnlineSorter(model)
    traces = recording.get_traces(return_in_uV=False)
    for start in range(0, len(traces), 3000):
        spikes = sorter.push(traces[start : start + 3000])
        if len(spikes.sample_index):
            assert spikes.sample_index.max() < sorter.samples_received - sorter.lookahead_samples
            assert spikes.sample_index.min() >= sorter.samples_received - 3000 - sorter.lookahead_samples
    assert 0 < sorter.lookahead_ms < 50


def test_online_refuses_wrong_chunks_and_motion_correction(small_esort_run):
    model = ESortModel.load(small_esort_run[0])
    with pytest.raises(ValueError, match=r"\(samples, 8\)"):
        OnlineSorter(model).push(np.zeros((100, 5), dtype="float32"))
    model.preprocessing["motion_correction"] = "dredge_fast"
    with pytest.raises(ValueError, match="motion correction"):
        OnlineSorter(model)
