"""Thresholds are chosen on the held-out end of the training window: per unit, the cut through the candidates'
probabilities that maximises accuracy TP / (TP + FP + FN) there."""

import numpy as np

from spikeinterface_esort.validation import CANDIDATE_FLOOR, best_threshold, match_candidates, valley_threshold


def test_threshold_falls_halfway_between_the_last_kept_and_the_first_rejected_candidate():
    values = np.array([0.95, 0.9, 0.3, 0.85, 0.2])
    matched = np.array([True, True, False, True, False])
    assert best_threshold(values, matched, num_annotated=3) == (0.85 + 0.3) / 2


def test_threshold_trades_a_false_detection_against_a_missed_spike_by_accuracy():
    # keeping 0.6 adds one true spike and one false one: 4 / 5 against 3 / 4, so it is kept; 0.4 is false only
    values = np.array([0.95, 0.9, 0.85, 0.7, 0.6, 0.4])
    matched = np.array([True, True, True, False, True, False])
    assert best_threshold(values, matched, num_annotated=4) == (0.6 + 0.4) / 2
    # with a fifth annotated spike never detected, the same cut: accuracy 4 / 6 against 3 / 5
    assert best_threshold(values, matched, num_annotated=5) == (0.6 + 0.4) / 2


def test_with_no_rejected_candidate_the_threshold_is_halfway_to_the_floor():
    """Every candidate is a true spike: the next candidate down is unseen, below the floor candidates are
    collected from, so the threshold is not pinned just under the lowest held-out value."""
    values = np.array([0.86, 0.84, 0.79, 0.85])
    matched = np.ones(4, dtype=bool)
    threshold = best_threshold(values, matched, num_annotated=4)
    assert threshold == (0.79 + CANDIDATE_FLOOR) / 2
    assert best_threshold(values, matched, num_annotated=4, floor=0.1) == (0.79 + 0.1) / 2


def test_equal_values_are_never_split():
    values = np.array([0.9, 0.5, 0.5, 0.3])
    matched = np.array([True, True, False, False])
    # cutting inside the tie at 0.5 is impossible: keep both (2 TP, 1 FP: 2/3) or neither (1 TP: 1/2)
    assert best_threshold(values, matched, num_annotated=2) == (0.5 + 0.3) / 2


def test_each_annotated_spike_matches_its_most_probable_nearby_candidate_once():
    candidates = np.array([100, 104, 300, 520])
    values = np.array([0.6, 0.9, 0.8, 0.7])
    annotated = np.array([102, 305, 700])
    matched = match_candidates(candidates, values, annotated, tolerance=12)
    np.testing.assert_array_equal(matched, [False, True, True, False])


def test_few_shot_threshold_falls_in_the_gap_between_weak_responses_and_the_shots():
    """Many weak candidates (other events) under 0.3, the unit's spikes around 0.8: the threshold is in the empty
    stretch between them, not at the fixed 0.5 nor under the weak responses; none without a shot above 0.1."""
    rng = np.random.default_rng(0)
    weak = rng.uniform(0.02, 0.3, 500)
    spikes = rng.uniform(0.7, 0.95, 60)
    values = np.concatenate([weak, spikes])
    threshold = valley_threshold(values, spikes[:10])
    assert 0.3 < threshold < 0.7
    assert valley_threshold(values, np.array([])) is None
    assert valley_threshold(values, np.array([0.05, 0.08])) is None
