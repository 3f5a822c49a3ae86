"""Many recordings: run_sorter_jobs with esort in worker processes that never imported spikeinterface_esort."""

import multiprocessing
import subprocess
import sys

import pytest
import spikeinterface.full as si


def test_a_fresh_python_that_imports_spikeinterface_knows_esort():
    code = "import sys, spikeinterface.sorters as ss; print('esort' in ss.available_sorters(), 'spikeinterface_esort' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]


@pytest.mark.parametrize("engine, engine_kwargs", [
    ("joblib", dict(n_jobs=2)),  # loky: fresh worker processes
    # SpikeInterface hands mp_context to ProcessPoolExecutor, which wants a context object
    ("processpoolexecutor", dict(max_workers=2, mp_context=multiprocessing.get_context("spawn"))),
])
def test_run_sorter_jobs_engines(engine, engine_kwargs, small_recording, multi_segment_recording, tmp_path):
    jobs = []
    for name, (recording, _, gt_folder) in {"a": small_recording, "b": multi_segment_recording}.items():
        jobs.append(dict(sorter_name="esort", recording=recording, folder=tmp_path / name, epochs=2,
                         annotation_sorting_path=str(gt_folder), train_duration_s=8.0, job_kwargs=dict(n_jobs=1)))
    si.run_sorter_jobs(jobs, engine=engine, engine_kwargs=engine_kwargs)
    for name in ("a", "b"):
        sorting = si.read_sorter_folder(tmp_path / name)
        assert sorting.to_spike_vector().size > 0
