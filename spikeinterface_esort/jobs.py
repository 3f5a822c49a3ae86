"""What every esort run shares: its log file, step timer, end-of-run summary and job settings."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from spikeinterface.core import BaseRecording
from spikeinterface.core.job_tools import ensure_chunk_size, fix_job_kwargs

logger = logging.getLogger("spikeinterface_esort")

LOG_FILE_NAME = "esort.log"


def chunk_size_from_job_kwargs(recording: BaseRecording, job_kwargs: dict) -> int:
    """Chunk size in samples from chunk_size, chunk_memory, total_memory or chunk_duration, as SpikeInterface reads them."""
    keys = ("chunk_size", "chunk_memory", "total_memory", "chunk_duration", "n_jobs")
    return int(ensure_chunk_size(recording, **{k: job_kwargs[k] for k in keys if k in job_kwargs}))


def resolve_job_kwargs(job_kwargs: dict) -> dict:
    """SpikeInterface job kwargs; n_jobs defaults to every core (not SpikeInterface's global 1)."""
    job_kwargs = dict(job_kwargs)
    job_kwargs.setdefault("n_jobs", -1)
    return fix_job_kwargs(job_kwargs)


@contextlib.contextmanager
def file_log(folder: Path):
    """Send this package's log records to ``folder / esort.log`` inside the block."""
    handler = logging.FileHandler(folder / LOG_FILE_NAME, encoding="utf8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    except Exception:
        logger.exception("esort failed")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


def optional_file_log(folder: Path | None):
    if folder is None:
        return contextlib.nullcontext()
    folder.mkdir(parents=True, exist_ok=True)
    return file_log(folder)


STEP_NAMES = {  # timings.json key -> what the step is, in a user's words
    "preprocessing": "preparing the recording (filter, noise levels)",
    "annotation": "annotating the training window",
    "window": "reading the training window",
    "curation": "curating the annotated units",
    "training": "training the network",
    "validation": "choosing thresholds on held-out annotations",
    "self-training": "relabelling the window with the network",
    "inference": "sorting the whole recording",
}


def run_summary(seconds: dict, recording_s: float) -> str:
    """The end-of-run summary: total wall time, each step's in words (``STEP_NAMES``), and how many times faster
    than real time the whole recording was sorted. ``seconds``: ``StepTimer.seconds`` (as saved in timings.json)."""
    total = sum(seconds.get(step, 0.0) for step in STEP_NAMES)
    lines = [f"esort sorted {recording_s:.1f} s of recording in {total:.1f} s:"]
    for step, words in STEP_NAMES.items():
        if step in seconds:
            lines.append(f"  {words:<48s} {seconds[step]:8.1f} s")
    if seconds.get("inference", 0.0) > 0:
        lines.append(f"  the sort ran at {recording_s / seconds['inference']:.1f}x real time")
    return "\n".join(lines)


class StepTimer:
    """Wall time of each named pipeline step, logged as it ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        logger.info("%s: start", name)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        logger.info("%s: done in %.2f s", name, self.seconds[name])
