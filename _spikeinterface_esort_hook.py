"""Registers esort with SpikeInterface in every Python process that imports ``spikeinterface.sorters``.

SpikeInterface 0.105 looks sorters up by name in ``spikeinterface.sorters.sorterlist``. A worker
process started by ``run_sorter_jobs`` (joblib/loky, a process pool with "spawn", dask, slurm) never
runs the user's ``import spikeinterface_esort``, so "esort" would be unknown there. The installed
``spikeinterface_esort.pth`` imports this small module when Python starts; it imports nothing
itself, and only when ``spikeinterface.sorters`` has been imported does it import
``spikeinterface_esort`` (which registers the sorter). Set ``SPIKEINTERFACE_ESORT_NO_AUTOREGISTER=1``
to turn it off.
"""

import os
import sys

TARGET = "spikeinterface.sorters"


def _register() -> None:
    if "spikeinterface_esort" in sys.modules:  # being imported, or imported: it registers itself
        return
    try:
        import spikeinterface_esort  # noqa: F401
    except Exception as err:  # never break importing SpikeInterface
        import warnings

        warnings.warn(f"spikeinterface-esort could not register the 'esort' sorter: {type(err).__name__}: {err}")


class _RegisterAfterImport:
    """Meta path finder: lets the normal finders load ``spikeinterface.sorters``, then registers esort."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_module_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_module_then_register
        return spec


def install() -> None:
    if os.environ.get("SPIKEINTERFACE_ESORT_NO_AUTOREGISTER"):
        return
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


install()
