"""Write reports/baselines/smoke.json from two smoke runs with different seeds.

    SMOKE_SEED=0 SMOKE_OUT=/tmp/s0 bash scripts/smoke_repro.sh
    SMOKE_SEED=1 SMOKE_OUT=/tmp/s1 bash scripts/smoke_repro.sh
    .venv/bin/python scripts/smoke_baseline.py /tmp/s0/metrics.json /tmp/s1/metrics.json

The baseline values are the seed-0 run's (CI runs seed 0, and a CPU run with the same params
and seed is bit-for-bit reproducible). The tolerance of each metric kind is twice the largest
seed-to-seed difference measured for that kind over all models, so CI flags a change only when
it moves a metric further than changing the seed does.
"""

import json
import sys
from pathlib import Path

from faceinpaint.regression import HIGHER_IS_BETTER, flatten, metric_kind

FLOOR = {"psnr": 0.05, "ssim": 0.001, "fd": 1.0, "lpips": 0.005, "id_sim": 0.002}


def main(seed0: str, seed1: str, out: str = "reports/baselines/smoke.json") -> None:
    a, b = flatten(json.loads(Path(seed0).read_text())), flatten(json.loads(Path(seed1).read_text()))
    spread: dict[str, float] = {k: 0.0 for k in HIGHER_IS_BETTER}
    for name, value in a.items():
        kind = metric_kind(name)
        if kind and name in b:
            spread[kind] = max(spread[kind], abs(value - b[name]))
    tolerances = {k: round(max(2 * spread[k], FLOOR[k]), 4) for k in spread}
    doc = {
        "what": "smoke-profile metrics (seed 0) and per-kind tolerances for scripts/smoke_repro.sh",
        "metrics": json.loads(Path(seed0).read_text()),
        "tolerances": tolerances,
        "measured_seed_spread": {k: round(v, 4) for k, v in spread.items()},
        "rule": "tolerance = max(2 x largest |seed0 - seed1| over models, floor)",
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"tolerances": tolerances, "spread": doc["measured_seed_spread"]}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
