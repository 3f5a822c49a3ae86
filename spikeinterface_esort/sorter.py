"""``ESortSorter``: E-Sort as a SpikeInterface sorter. It only wires the pipeline to SpikeInterface's
folder protocol; the work is in ``pipeline.run_esort``."""

from __future__ import annotations

from pathlib import Path

from spikeinterface.core import BaseRecording, load
from spikeinterface.sorters import BaseSorter

from . import __version__
from .parameters import default_params, params_description


class ESortSorter(BaseSorter):
    """E-Sort: an end-to-end neural network spike sorter trained from annotated spikes.

    A small network reads raw multi-channel traces and outputs, at every sample, the probability
    that each annotated unit fires; tensor post-processing turns probabilities into spikes.
    """

    sorter_name = "esort"
    requires_locations = True
    gpu_capability = "nvidia-optional"
    requires_binary_data = False
    handle_multi_segment = True
    compatible_with_parallel = {"loky": True, "multiprocessing": True, "threading": False}

    _default_params = default_params()
    _params_description = params_description()

    sorter_description = (
        "E-Sort (Han & Wang 2024): an end-to-end neural network, trained on annotated spikes of a "
        "training window, outputs per-unit firing probabilities at every sample; spikes are smoothed "
        "local maxima above thresholds chosen on held-out annotations."
    )
    installation_mesg = "pip install spikeinterface-esort (needs torch)"

    @classmethod
    def is_installed(cls) -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None  # found, not imported: torch loads when esort runs

    @classmethod
    def get_sorter_version(cls) -> str:
        return __version__

    @classmethod
    def _check_params(cls, recording: BaseRecording, output_folder, params: dict) -> dict:
        from .pipeline import check_inputs

        check_inputs(recording, params)
        return params

    @classmethod
    def _setup_recording(cls, recording, sorter_output_folder, params, verbose):
        pass  # esort reads the recording lazily through SpikeInterface

    @classmethod
    def _run_from_folder(cls, sorter_output_folder: Path, params: dict, verbose: bool) -> None:
        from .pipeline import run_esort

        recording = cls.load_recording_from_folder(Path(sorter_output_folder).parent, with_warnings=False)
        run_esort(recording, params, sorter_output_folder, verbose)

    @classmethod
    def _get_result_from_folder(cls, sorter_output_folder: Path):
        sorting_folder = Path(sorter_output_folder) / "sorting"
        if not sorting_folder.is_dir():
            raise FileNotFoundError(
                f"{sorting_folder} does not exist: this esort run did not complete (see esort.log beside it)."
            )
        return load(sorting_folder)

    @classmethod
    def _check_apply_filter_in_params(cls, params: dict) -> bool:
        return bool(params["apply_preprocessing"])
