"""A user imports spikeinterface_esort and finds "esort" among SpikeInterface's sorters."""

import pytest
import spikeinterface.full as si

import spikeinterface_esort
from spikeinterface_esort import ESortSorter
from spikeinterface_esort.parameters import PARAMETERS


def test_esort_is_registered_once():
    from spikeinterface.sorters import sorterlist

    spikeinterface_esort.register()
    spikeinterface_esort.register()
    assert sorterlist.sorter_dict["esort"] is ESortSorter
    assert sum(s.sorter_name == "esort" for s in sorterlist.sorter_full_list) == 1
    assert "esort" in si.available_sorters()
    assert "esort" in si.installed_sorters()


def test_default_params_and_descriptions():
    defaults = si.get_default_sorter_params("esort")
    descriptions = si.get_sorter_params_description("esort")
    assert defaults == {p.name: p.default for p in PARAMETERS}
    assert set(descriptions) == set(defaults)
    assert all(isinstance(text, str) and len(text) > 20 for text in descriptions.values())
    assert defaults["annotation_sorter"] == "spykingcircus2"
    assert defaults["job_kwargs"] == {}
    assert ESortSorter.handle_multi_segment and ESortSorter.requires_locations


def test_unknown_parameter_is_refused_by_spikeinterface(small_recording, tmp_path):
    recording, _, _ = small_recording
    with pytest.raises(ValueError, match="Invalid parameters"):
        si.run_sorter("esort", recording, folder=tmp_path / "out", not_a_parameter=1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(epochs="ten"), "'epochs' must be one of 'auto', got 'ten'"),
        (dict(epochs=2.5), "'epochs' must be int or str"),
        (dict(learning_rate=-1.0), "'learning_rate' must be in"),
        (dict(detection_threshold=1.5), "'detection_threshold' must be in"),
        (dict(detection_threshold="best"), "'detection_threshold' must be one of"),
        (dict(apply_preprocessing="yes"), "'apply_preprocessing' must be bool"),
        (dict(freq_max=20000.0), "'freq_max'=20000.0 Hz must be below the Nyquist"),
        (dict(job_kwargs=dict(n_cores=2)), "'job_kwargs' has unknown keys"),
    ],
)
def test_bad_parameter_values_are_refused_before_sorting(small_recording, tmp_path, bad, message):
    recording, _, _ = small_recording
    with pytest.raises(ValueError, match=message):
        si.run_sorter("esort", recording, folder=tmp_path / "out", **bad)


def test_a_fresh_interpreter_registers_esort_without_loading_torch():
    """The start-up hook registers esort wherever spikeinterface.sorters is imported (run_sorter_jobs workers
    included) without importing torch; torch loads when esort is used."""
    import subprocess
    import sys

    code = (
        "import sys; import spikeinterface.sorters as ss; "
        "assert 'esort' in ss.sorterlist.sorter_dict, 'not registered'; "
        "assert 'torch' not in sys.modules, 'torch loaded on registration'; "
        "import spikeinterface_esort; assert 'torch' not in sys.modules, 'torch loaded on import'; "
        "assert 'esort' in ss.installed_sorters() and 'torch' not in sys.modules; "
        "spikeinterface_esort.ESortModel; assert 'torch' in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
