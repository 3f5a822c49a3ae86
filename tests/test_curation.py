"""After the sort: the usual SpikeInterface curation path, with esort's per-unit properties in phy."""

import numpy as np
import pandas as pd
import spikeinterface.full as si

import spikeinterface_esort


def test_phy_export_carries_esort_unit_columns_and_each_spikes_probability(small_recording, small_esort_run, tmp_path):
    recording = small_recording[0]
    folder, sorting = small_esort_run
    # a curator's view of the sorting: units in another order, one removed
    curated = sorting.select_units(sorting.unit_ids[::-1][:-1])
    analyzer = si.create_sorting_analyzer(curated, recording, sparse=False)
    analyzer.compute(["random_spikes", "templates", "noise_levels", "quality_metrics"],
                     extension_params={"quality_metrics": {"metric_names": ["snr", "firing_rate"]}})
    assert set(analyzer.get_extension("quality_metrics").get_data().columns) >= {"snr", "firing_rate"}
    # spikeinterface-gui's unit list shows the analyzer's sorting properties
    assert set(spikeinterface_esort.UNIT_PROPERTIES) <= set(analyzer.sorting.get_property_keys())

    phy_folder = spikeinterface_esort.export_to_phy(analyzer, tmp_path / "phy", folder, compute_pc_features=False,
                                                    compute_amplitudes=False, verbose=False)
    for name in spikeinterface_esort.UNIT_PROPERTIES:
        table = pd.read_csv(phy_folder / f"cluster_{name}.tsv", sep="\t")
        assert list(table.columns) == ["cluster_id", name]
        assert len(table) == len(curated.unit_ids)
    accuracy = pd.read_csv(phy_folder / "cluster_esort_validation_accuracy.tsv", sep="\t")["esort_validation_accuracy"]
    assert np.allclose(accuracy, curated.get_property("esort_validation_accuracy"))

    # phy's spike rows: spike_times.npy and spike_clusters.npy; the probability file is aligned with them
    times = np.load(phy_folder / "spike_times.npy").ravel()
    clusters = np.load(phy_folder / "spike_clusters.npy").ravel()
    probability = np.load(phy_folder / "spike_esort_probability.npy")
    assert probability.dtype == np.float32 and probability.shape == times.shape
    assert not np.isnan(probability).any()
    expected = spikeinterface_esort.spike_probabilities(folder)
    for cluster, unit_id in enumerate(curated.unit_ids):
        train = curated.get_unit_spike_train(unit_id)
        rows = np.flatnonzero(clusters == cluster)
        assert np.array_equal(times[rows], train)
        assert np.allclose(probability[rows], expected[unit_id])
    assert len(set(np.round(probability, 4))) > 10  # real per-spike values, not one constant


def test_phy_export_marks_spikes_that_esort_did_not_find(small_recording, small_esort_run, tmp_path):
    recording = small_recording[0]
    folder, sorting = small_esort_run
    unit_id = sorting.unit_ids[0]
    trains = {u: sorting.get_unit_spike_train(u) for u in sorting.unit_ids}
    trains[unit_id] = np.sort(np.r_[trains[unit_id], 17])  # a spike a curator added
    edited = si.NumpySorting.from_unit_dict(trains, sorting.sampling_frequency)
    analyzer = si.create_sorting_analyzer(edited, recording, sparse=False)
    analyzer.compute(["random_spikes", "templates"])
    phy_folder = spikeinterface_esort.export_to_phy(analyzer, tmp_path / "phy", folder, compute_pc_features=False,
                                                    compute_amplitudes=False, add_quality_metrics=False, verbose=False)
    probability = np.load(phy_folder / "spike_esort_probability.npy")
    times = np.load(phy_folder / "spike_times.npy").ravel()
    assert np.isnan(probability[times == 17]).all() and np.isnan(probability).sum() == 1


def test_each_spike_keeps_its_network_probability(small_esort_run):
    folder, sorting = small_esort_run
    probabilities = spikeinterface_esort.spike_probabilities(folder)
    assert set(probabilities) == set(sorting.unit_ids)
    thresholds = dict(zip(sorting.unit_ids, sorting.get_property("esort_threshold")))
    means = dict(zip(sorting.unit_ids, sorting.get_property("esort_mean_probability")))
    for unit_id, values in probabilities.items():
        assert len(values) == len(sorting.get_unit_spike_train(unit_id))
        if len(values):
            assert values.min() >= thresholds[unit_id] - 1e-6  # a spike is a maximum above its unit's threshold
            assert abs(values.mean() - means[unit_id]) < 1e-4
