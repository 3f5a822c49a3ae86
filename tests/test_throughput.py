"""The throughput benchmark measures what it says: one row per path, the fast path compared with the exact one,
and peak memory over recordings of growing length."""

from __future__ import annotations

import json

from spikeinterface_esort.tools import throughput


def test_throughput_table_has_a_row_per_path(tmp_path, capsys):
    assert throughput.main(["--channels", "8", "--strides", "2", "--dtypes", "float32", "--duration", "3",
                            "--threads", "1", "--folder", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["throughput"]
    assert [(r["stride"], r["dtype"]) for r in rows] == [(1, "float32"), (2, "float32")]  # exact path first
    for r in rows:
        assert r["channels"] == 8 and r["duration_s"] == 3.0
        assert r["rtf_network"] > r["rtf_network_and_postprocessing"] > 0
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 50
    assert "| 8 | 4 | cpu | fft | 2 | float32 |" in capsys.readouterr().out
    # the filter a GPU runs, with torch on the CPU: the same spikes
    assert throughput.main(["--channels", "8", "--strides", "2", "--dtypes", "float32", "--duration", "3",
                            "--threads", "1", "--folder", str(tmp_path), "--filter-on-device"]) == 0
    on_device = json.loads((tmp_path / "throughput.json").read_text())["throughput"]
    assert [r["filter_on_device"] for r in rows + on_device] == [False, False, True, True]
    assert [r["spikes"] for r in on_device] == [r["spikes"] for r in rows]
    assert "| 8 | 4 | cpu | fft on device | 2 | float32 |" in capsys.readouterr().out


def test_throughput_measures_the_local_spatial_filter(tmp_path, capsys):
    assert throughput.main(["--channels", "8", "--strides", "2", "--dtypes", "float32", "--duration", "3",
                            "--threads", "1", "--folder", str(tmp_path), "--spatial-radii", "none", "10"]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["throughput"]
    assert [(r["stride"], r["spatial_radius_um"]) for r in rows] == [(1, None), (2, None), (2, 10.0)]
    assert [r["spatial_weights_per_feature"] for r in rows] == [8, 8, 2.0]  # 4 columns of 2 channels
    out = capsys.readouterr().out
    assert "| 8 | 4 | cpu | fft | 2 | float32 | dense (8) |" in out and "| 8 | 4 | cpu | fft | 2 | float32 | 10 um (2) |" in out


def test_memory_mode_reads_recordings_generated_on_the_fly(tmp_path, capsys):
    assert throughput.main(["--channels", "8", "--strides", "1", "--dtypes", "float32", "--threads", "1",
                            "--memory", "2", "4", "--folder", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["memory"]
    assert [r["duration_s"] for r in rows] == [2.0, 4.0]
    assert all(r["lazy"] and r["peak_rss_mb"] > 50 for r in rows)
    assert not any(tmp_path.glob("rec*"))  # nothing generated to disk
    assert "| 4 |" in capsys.readouterr().out


def test_precision_check_times_each_precision_and_its_error(capsys):
    import torch

    from spikeinterface_esort.device import native_bfloat16

    assert throughput.main(["--precision-check", "--channels", "8", "--threads", "1"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["native_bfloat16"] == native_bfloat16(torch.device("cpu"))
    assert row["spatial_float32_s_per_s"] > 0 and row["spatial_bfloat16_s_per_s"] > 0
    # float32 is near exact; bfloat16 keeps 8 bits of mantissa, int8 about 7 bits: errors of a few 1e-3
    assert row["spatial_float32_relative_error"] < 1e-5
    assert 1e-4 < row["spatial_bfloat16_relative_error"] < 2e-2
    if hasattr(torch, "_int_mm"):
        assert row["spatial_int8_s_per_s"] > 0 and row["spatial_int8_product_only_s_per_s"] > 0
        assert 1e-4 < row["spatial_int8_relative_error"] < 2e-2


def test_training_speed_tool_times_each_form_of_the_training_step():
    """The training-speed study runs the sorter's training step and the forms it replaced on a small probe."""
    from spikeinterface_esort.tools.training_speed import FORMS, measure

    result = measure(channels=32, batches=1, rounds=1, threads=1)
    assert set(result) == set(FORMS)
    assert all(wall > 0 and cpu > 0 for wall, cpu in result.values())
