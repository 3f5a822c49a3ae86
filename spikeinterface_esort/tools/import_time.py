"""What installing esort costs every SpikeInterface process: the time to ``import spikeinterface.sorters`` with
esort's start-up registration and without it, each in fresh interpreters, interleaved, and whether torch loads.

    python -m spikeinterface_esort.tools.import_time --repeats 7

"Without" sets ``SPIKEINTERFACE_ESORT_NO_AUTOREGISTER=1``, which turns the registration off: the same as an
environment without esort installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = (
    "import sys, time; t = time.perf_counter(); import {module}; s = time.perf_counter() - t; "
    "import spikeinterface.sorters as ss; "
    "print(__import__('json').dumps(dict(seconds=s, torch='torch' in sys.modules, "
    "esort='esort' in ss.sorterlist.sorter_dict)))"
)

CASES = {  # name -> (module imported, environment changes)
    "spikeinterface.sorters, esort registration off": ("spikeinterface.sorters", {"SPIKEINTERFACE_ESORT_NO_AUTOREGISTER": "1"}),
    "spikeinterface.sorters, esort registered at start-up": ("spikeinterface.sorters", {}),
    "spikeinterface_esort": ("spikeinterface_esort", {}),
}


def measure_once(module: str, env_changes: dict) -> dict:
    """One fresh interpreter: seconds to import ``module``, whether torch is loaded after it, whether esort is
    registered."""
    env = dict(os.environ)
    env.pop("SPIKEINTERFACE_ESORT_NO_AUTOREGISTER", None)
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(repeats: int) -> list[dict]:
    """``repeats`` rounds, each case once per round (interleaved, so that a busy machine slows all cases alike);
    a first unmeasured round warms the file cache. One row per case: median and range of the seconds."""
    for module, env_changes in CASES.values():
        measure_once(module, env_changes)
    runs = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, case in CASES.items():
            runs[name].append(measure_once(*case))
    rows = []
    for name, results in runs.items():
        seconds = [r["seconds"] for r in results]
        rows.append(dict(case=name, median_s=statistics.median(seconds), min_s=min(seconds), max_s=max(seconds),
                         torch_loaded=any(r["torch"] for r in results), esort_registered=all(r["esort"] for r in results),
                         repeats=len(seconds)))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| import | median (s) | range (s) | torch loaded | esort registered |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | "
                     f"{'yes' if r['torch_loaded'] else 'no'} | {'yes' if r['esort_registered'] else 'no'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spikeinterface_esort.tools.import_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per case")
    parser.add_argument("--json", help="also write the rows to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = measure(args.repeats)
    print(table(rows))
    off, on = rows[0]["median_s"], rows[1]["median_s"]
    print(f"\nesort's registration adds {on - off:+.2f} s (median) to import spikeinterface.sorters "
          f"({args.repeats} fresh interpreters per case, {os.cpu_count()} CPU cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
