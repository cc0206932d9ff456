"""Run every benchmark, write ``benchmarks/results/*.json`` and print one combined table.

Usage::

    python -m benchmarks.run_all            # full sizes (`make bench`, < 20 min on 2 cores)
    python -m benchmarks.run_all --quick    # smoke run with tiny sizes (tests)
    python -m benchmarks.run_all --only race_tft --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import (
    features_throughput,
    race_tft,
    regime_gate,
    seed_claim,
    sequence_training,
    stage1_quality,
    update_latency,
)
from benchmarks.common import RESULTS_DIR, format_table, quiet

BENCHMARKS = {
    "seed_claim": seed_claim,
    "race_tft": race_tft,
    "features_throughput": features_throughput,
    "update_latency": update_latency,
    "stage1_quality": stage1_quality,
    "regime_gate": regime_gate,
    "sequence_training": sequence_training,
}


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """The headline numbers of each benchmark as ``benchmark | measure | value`` rows."""
    rows = []
    for name, result in results.items():
        for key, value in result.get("ratios", {}).items():
            if isinstance(value, dict):
                rows += [{"benchmark": name, "measure": f"{key}: {k}", "value": v}
                         for k, v in value.items()]  # fmt: skip
            else:
                rows.append({"benchmark": name, "measure": key, "value": value})
    return rows


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Parse the arguments and run the chosen benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import torch

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    results, seconds = {}, {}
    for name in args.only or list(BENCHMARKS):
        t0 = time.perf_counter()
        results[name] = BENCHMARKS[name].run(quick=args.quick, results_dir=args.results_dir)
        seconds[name] = time.perf_counter() - t0
    rows = summary_rows(results)
    print("\n## Summary (ratios measured in this run)\n")
    print(format_table(rows))
    print("\nseconds per benchmark: " + json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    return results


if __name__ == "__main__":
    main()
