"""Study tools, kept apart from the sorter: they import the sorting pipeline, and the pipeline never imports them.

- ``datasets``: generated ground-truth recordings (presets, Neuropixels 1.0 probe, drift) and held-out scoring;
- ``benchmark``: esort against Kilosort4, SpykingCircus2 and Tridesclous2 through ``run_sorter``;
- ``scaling``: cost (wall time, peak memory) against recording length;
- ``settings_study``: accuracy and time of candidate default settings, preset by preset;
- ``throughput``: inference speed by channel count, stride and precision;
- ``training_speed``: milliseconds per training batch of the sorter's network;
- ``studies``: drift, noise and model-reuse studies;
- ``fewshot``: few-shot fine-tuning from a backbone;
- ``pretrain``: builds the shipped backbones;
- ``import_time``: what installing esort costs every ``import spikeinterface.sorters``.

Each runs as ``python -m spikeinterface_esort.tools.<name> --help``.
"""
