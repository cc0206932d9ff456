"""``make demo``: the whole pipeline on the bundled real data, then the metrics table.

Equivalent to ``relcast run --data demo --preset small --out runs/demo`` with the demo's
settings below (sized to finish in minutes on a 2-core laptop CPU).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

# Demo settings on top of the small preset: every Stage3 comparison the evaluation needs,
# with epochs capped so two CPU cores finish in minutes.
DEMO_OVERRIDES = [
    "data.source=demo",
    "data.start=2006-01-01",  # ~1,920 dates: 2006-2011 train, then valid and test spans
    "stage3.models=[gru,tft]",  # TFT for quantile bands and variable importance
    "stage3.feature_sets=[hybrid,own,rawconcat]",
    "stage3.baseline_models=[gru]",  # own/rawconcat comparisons with the GRU only
    "stage3.lookback=40",
    "stage3.max_epochs=3",
    "stage3.patience=1",
    "trainer.progress=false",
]


def main(argv: list[str] | None = None) -> int:
    import relcast
    from relcast.config import load_config
    from relcast.data.datasets import describe_panel
    from relcast.evaluation.metrics_table import metrics_table_text
    from relcast.run.runner import Pipeline

    argv = sys.argv[1:] if argv is None else argv
    paths = [a for a in argv if not a.startswith("--")]
    out = Path(paths[0]) if paths else Path("runs/demo")
    start = time.perf_counter()
    print(describe_panel(relcast.load_dataset("demo")), flush=True)
    cfg = load_config("small", overrides=DEMO_OVERRIDES)
    force = "--force" in argv
    if (out / "run.json").exists() and not force:
        if Pipeline.open(out).config != cfg:
            print(f"{out} holds a run with other settings: starting it again", flush=True)
            force = True
        else:
            print(f"resuming {out}: finished steps are kept (--force retrains all)", flush=True)
    metrics = Pipeline(cfg, out).run(force=force)
    print()
    print(metrics_table_text(metrics))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall time {time.perf_counter() - start:.0f}s, peak RSS {peak_mb:.0f} MB")
    print(f"run folder: {out}   report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
