"""Registration of ``ESortSorter`` in SpikeInterface's sorter lists.

SpikeInterface 0.105 has no plugin entry points: ``run_sorter``, ``available_sorters``,
``installed_sorters``, ``get_default_sorter_params`` and ``read_sorter_folder`` all look
sorters up in ``spikeinterface.sorters.sorterlist.sorter_full_list`` and ``sorter_dict``.
``register`` adds E-Sort to both, in place (every module holding a reference sees it),
once however often it is called.
"""

from __future__ import annotations


def register() -> None:
    from spikeinterface.sorters import sorterlist

    from .sorter import ESortSorter

    if not any(s.sorter_name == ESortSorter.sorter_name for s in sorterlist.sorter_full_list):
        sorterlist.sorter_full_list.append(ESortSorter)
    sorterlist.sorter_dict[ESortSorter.sorter_name] = ESortSorter
