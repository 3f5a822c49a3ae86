"""The collision study tool: recall of truth spikes that overlap a nearby unit's, apart from the isolated ones."""

import numpy as np
from spikeinterface.core import NumpySorting

from spikeinterface_esort.tools.collisions import collision_mask, collision_recall, held_out_spikes, main


def test_a_sorter_missing_every_overlap_scores_recall_1_isolated_and_0_in_collision(small_recording, capsys):
    recording, truth, truth_folder = small_recording
    masks = collision_mask(truth, radius_um=1000.0, lag_ms=1.5)  # every unit is a neighbour on this 8-channel probe
    assert 0.0 < np.mean(np.concatenate(list(masks.values()))) < 0.5
    isolated_only = NumpySorting.from_unit_dict(
        {u: truth.get_unit_spike_train(u)[~masks[u]] for u in truth.unit_ids}, truth.get_sampling_frequency())
    scores = collision_recall(truth, isolated_only, masks)
    assert scores["recall_isolated"] == 1.0 and scores["recall_in_collision"] == 0.0
    # no unit lies within 0 um of another: nothing collides
    assert not any(m.any() for m in collision_mask(truth, radius_um=0.0, lag_ms=1.5).values())
    # held out of a 12 s recording: esort's default window is its first 6 s, in one piece
    kept = held_out_spikes(truth, recording)
    for unit in truth.unit_ids:
        spikes = truth.get_unit_spike_train(unit)
        np.testing.assert_array_equal(kept[unit], spikes >= 6 * truth.get_sampling_frequency())

    main(["--ground-truth", str(truth_folder), "--sortings", f"truth={truth_folder}", "--radius-um", "1000",
          "--held-out-of", str(truth_folder.parent / "recording")])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| truth |")][0]
    assert row.endswith("| 1.000 | 1.000 |")  # the truth finds itself, overlaps included
