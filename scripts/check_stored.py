#!/usr/bin/env python3
"""CI check of the model store: every stored `cpu` model loads on a fresh clone and scores, on a
fixed test subset, exactly what was committed in ``reports/baselines/stored.json``.

    python scripts/check_stored.py            # compare (exit 1 on any difference)
    python scripts/check_stored.py --write    # after a training sitting: record the numbers

Inpainters: the evaluation's metric code on the first ``N`` test images with their squares (the
learning-curve subset). The prior: both Frechet distances of ``N`` samples of its exported
``G_ema`` against the first ``N`` test faces. A model that is not in the workspace (not stored)
is skipped and listed; one that is recorded but missing fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "reports" / "baselines" / "stored.json"
N_IMAGES = 100


def scores(cfg, name: str, n: int) -> dict[str, float]:
    if name == "stylegan":
        from faceinpaint.prior_quality import PriorQuality
        from faceinpaint.recipes import load_prior

        generator, _ = load_prior(cfg, "cpu")
        values, _ = PriorQuality(cfg, n, "cpu").check(generator)
        return {k: float(v) for k, v in values.items()}
    from faceinpaint.evaluate import CurveEvaluator
    from faceinpaint.recipes import load_inpainter

    return CurveEvaluator(cfg, n, "cpu")(load_inpainter(cfg, name, "cpu"))


def present(name: str) -> bool:
    from faceinpaint.recipes import MODEL_FILE, MODELS_DIR

    return (MODELS_DIR / name / ("stylegan2.pt" if name == "stylegan" else MODEL_FILE)).is_file()


def main(argv=None) -> int:
    import os

    from faceinpaint.config import load_config
    from faceinpaint.regression import compare, format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the current models' numbers")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = load_config(ROOT / "params.yaml", "cpu")
    recorded = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {"metrics": {}}
    from faceinpaint.models import TRAINED

    names = [m for m in TRAINED if present(m)]  # the registry's trained models: the prior, then the inpainters
    if args.write:
        doc = {"what": "stored cpu models scored on a fixed test subset (scripts/check_stored.py)",
               "n_images": N_IMAGES, "rel_tolerance": 1e-6,
               "metrics": {m: scores(cfg, m, N_IMAGES) for m in names}}
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"recorded {', '.join(names)} in {BASELINE}")
        return 0
    missing = [m for m in recorded["metrics"] if m not in names]
    if missing:
        print(f"recorded but not in the workspace (run scripts/setup.sh): {', '.join(missing)}", file=sys.stderr)
        return 1
    current = {m: scores(cfg, m, int(recorded["n_images"])) for m in recorded["metrics"]}
    rows = compare(current, recorded["metrics"], float(recorded.get("rel_tolerance", 1e-6)))
    print(format_table(rows))
    unrecorded = [m for m in names if m not in recorded["metrics"]]
    if unrecorded:
        print(f"in the workspace but not recorded (not checked): {', '.join(unrecorded)}")
    return 0 if all(r.status == "equal" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
