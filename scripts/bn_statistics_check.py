#!/usr/bin/env python3
"""How much a stored baseline loses to its batch norm's running statistics.

    python scripts/bn_statistics_check.py rfr pconv   # reports/diagnostics/bn_statistics.json

Each model is scored with the learning curve's metric code (first ``evaluate.curve_images`` test
images with their squares) twice: as evaluated (every batch norm on its running statistics) and
with each batch norm on the statistics of the test batch itself (``evaluate.batch_size`` images;
running statistics left untouched). The second is not a valid evaluation (it looks at the test
batch); the gap measures the train/test mismatch of the normalisation. RFR applies the same batch
norm layers in each of its recurrences, to maps with different hole coverage, so its running
statistics average over recurrences that differ; its fine-tune phase (batch norm frozen on the
running statistics from ``finetune_from_step``) is what trains the rest of the network to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "diagnostics" / "bn_statistics.json"


def batch_statistics(model: torch.nn.Module) -> int:
    """Switch every batch norm to the batch's statistics without updating the running ones."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.train()
        layer.momentum = 0.0
    return len(layers)


def main(argv=None) -> int:
    from faceinpaint.config import load_config
    from faceinpaint.evalformat import FACE_FD
    from faceinpaint.evaluate import CurveEvaluator
    from faceinpaint.recipes import load_inpainter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = load_config(ROOT / "params.yaml")
    evaluate = CurveEvaluator(cfg, cfg.evaluate.curve_images, "cpu")
    doc = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name in args.models:
        progress = json.loads((ROOT / "artifacts" / "models" / name / "progress.json").read_text())
        model = load_inpainter(cfg, name, "cpu")
        running = evaluate(model)
        layers = batch_statistics(model)
        if not layers:
            sys.exit(f"{name}: has no batch norm")
        batch = evaluate(model)
        doc[name] = {"images_seen": progress["images_seen"], "batch_norm_layers": layers,
                     "test_images": cfg.evaluate.curve_images, "batch_size": cfg.evaluate.batch_size,
                     "running_statistics": running, "test_batch_statistics": batch}
        fd = next(k for k in running if k.startswith("fd_") and k != FACE_FD)  # its key names the backbone
        print(f"{name} ({progress['images_seen']} images): PSNR {running['psnr']:.3f} with running statistics, "
              f"{batch['psnr']:.3f} with the test batch's; {fd} {running[fd]:.3f} / {batch[fd]:.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
