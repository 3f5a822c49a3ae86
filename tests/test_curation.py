"""After the sort: the usual SpikeInterface curation path, with esort's per-unit properties in phy."""

import pandas as pd
import spikeinterface.full as si

import spikeinterface_esort


def test_analyzer_quality_metrics_and_phy_export_carry_esort_properties(small_recording, small_esort_run, tmp_path):
    recording = small_recording[0]
    _, sorting = small_esort_run
    analyzer = si.create_sorting_analyzer(sorting, recording, sparse=False)
    analyzer.compute(["random_spikes", "templates", "noise_levels", "quality_metrics"],
                     extension_params={"quality_metrics": {"metric_names": ["snr", "firing_rate"]}})
    assert set(analyzer.get_extension("quality_metrics").get_data().columns) >= {"snr", "firing_rate"}

    phy_folder = tmp_path / "phy"
    si.export_to_phy(analyzer, phy_folder, compute_pc_features=False, compute_amplitudes=False,
                     additional_properties=list(spikeinterface_esort.UNIT_PROPERTIES), verbose=False)
    for name in spikeinterface_esort.UNIT_PROPERTIES:
        table = pd.read_csv(phy_folder / f"cluster_{name}.tsv", sep="\t")
        assert list(table.columns) == ["cluster_id", name]
        assert len(table) == len(sorting.unit_ids)
    accuracy = pd.read_csv(phy_folder / "cluster_esort_validation_accuracy.tsv", sep="\t")["esort_validation_accuracy"]
    assert accuracy.between(0, 1).all()


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
