"""E-Sort, an end-to-end neural-network spike sorter, as a SpikeInterface sorter plugin.

Importing this package registers the ``"esort"`` sorter with SpikeInterface, so that
``spikeinterface.sorters.run_sorter("esort", recording, folder=...)`` works. The import is light:
torch and the pipeline load when esort runs, or when one of the names below is first used.
"""

__version__ = "0.1.0"

from .parameters import PUBLISHED_PARAMS  # noqa: E402
from .registration import register  # noqa: E402
from .results import export_to_phy, spike_probabilities  # noqa: E402
from .sorter import ESortSorter  # noqa: E402

register()

# name -> module, imported on first use (PEP 562): these need torch
_LAZY = {
    "ESortModel": ".model",
    "OnlineSorter": ".online",
    "UNIT_PROPERTIES": ".output",
    "available_backbones": ".transfer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ESortSorter", "ESortModel", "OnlineSorter", "PUBLISHED_PARAMS", "UNIT_PROPERTIES", "available_backbones", "register",
    "export_to_phy", "spike_probabilities", "__version__",
]
