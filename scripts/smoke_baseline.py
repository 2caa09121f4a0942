"""Write reports/baselines/smoke-<numerics kind>.json from a smoke run's metrics.

    SMOKE_OUT=/tmp/s0 bash scripts/smoke_repro.sh       # fails while the baseline is stale
    .venv/bin/python scripts/smoke_baseline.py /tmp/s0/metrics.json

CI (`scripts/smoke_repro.sh`) then requires every smoke metric to equal this run's within
``rel_tolerance`` (same-seed CPU runs are bit-for-bit reproducible on one machine kind): a change
that moves any of them, on purpose or not, shows in the check's table, and a deliberate one
regenerates this file in the same commit.
"""

import json
import sys
from pathlib import Path

from faceinpaint.regression import DEFAULT_REL_TOLERANCE, numerics_kind


def main(run_metrics: str, out: str | None = None) -> None:
    kind = numerics_kind()
    out = out or f"reports/baselines/smoke-{kind}.json"  # one per CPU kind (faceinpaint.regression)
    doc = {
        "what": "smoke-profile metrics (seed 0) that scripts/smoke_repro.sh requires exactly",
        "numerics_kind": kind,
        "rel_tolerance": DEFAULT_REL_TOLERANCE,
        "metrics": json.loads(Path(run_metrics).read_text()),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
