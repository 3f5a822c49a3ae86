"""The demo's and studies' generated datasets are reused only when generated with the same arguments."""

from spikeinterface_esort.tools.datasets import generate_dataset


def test_dataset_is_reused_only_for_the_same_arguments(tmp_path):
    generate_dataset(tmp_path, num_channels=8, num_units=3, duration_s=3.0)
    written = (tmp_path / "dataset.json").stat().st_mtime_ns
    again, _ = generate_dataset(tmp_path, num_channels=8, num_units=3, duration_s=3.0)
    assert (tmp_path / "dataset.json").stat().st_mtime_ns == written  # reloaded, not generated again
    assert again.get_num_channels() == 8
    other, ground_truth = generate_dataset(tmp_path, num_channels=16, num_units=4, duration_s=3.0)
    assert other.get_num_channels() == 16 and len(ground_truth.unit_ids) == 4
