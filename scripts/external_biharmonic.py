"""An inpainting method outside the code base, run on the exported benchmark: scikit-image's
biharmonic fill over ``inputs/`` and ``masks/`` of a benchmark folder (``faceinpaint benchmark
export``), writing a predictions folder that ``faceinpaint evaluate --predictions`` scores.

It reads only the benchmark's files (PNG and ``manifest.json``) and imports nothing of the
suite: it stands for any program a researcher brings.

    python scripts/external_biharmonic.py artifacts/benchmark artifacts/predictions/biharmonic_ext
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.restoration import inpaint_biharmonic


def predict(benchmark: Path, out: Path) -> int:
    manifest = json.loads((benchmark / "manifest.json").read_text())
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for entry in manifest["files"]:
        image = np.asarray(Image.open(benchmark / "inputs" / entry["file"]).convert("RGB"), np.float64) / 255.0
        hole = np.asarray(Image.open(benchmark / "masks" / entry["file"])) > 127
        filled = inpaint_biharmonic(image, hole, channel_axis=-1) if hole.any() else image
        path = tmp / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)).save(path)
    shutil.copyfile(benchmark / "manifest.json", tmp / "manifest.json")  # what the predictions were made for
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return len(manifest["files"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", type=Path, help="an exported benchmark folder")
    parser.add_argument("out", type=Path, help="the predictions folder to write")
    args = parser.parse_args(argv)
    n = predict(args.benchmark, args.out)
    print(f"wrote {n} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
