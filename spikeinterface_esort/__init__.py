"""E-Sort, an end-to-end neural-network spike sorter, as a SpikeInterface sorter plugin.

Importing this package registers the ``"esort"`` sorter with SpikeInterface, so that
``spikeinterface.sorters.run_sorter("esort", recording, folder=...)`` works.
"""

__version__ = "0.1.0"

from .sorter import ESortSorter  # noqa: E402
from .registration import register  # noqa: E402
from .pipeline import UNIT_PROPERTIES  # noqa: E402
from .model import ESortModel  # noqa: E402
from .parameters import PUBLISHED_PARAMS  # noqa: E402
from .online import OnlineSorter  # noqa: E402
from .results import spike_probabilities  # noqa: E402
from .transfer import available_backbones  # noqa: E402

register()

__all__ = [
    "ESortSorter", "ESortModel", "OnlineSorter", "PUBLISHED_PARAMS", "UNIT_PROPERTIES", "available_backbones", "register",
    "spike_probabilities", "__version__",
]
