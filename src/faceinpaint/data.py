"""Data preparation (the ``prepare`` stage) and the datasets every model trains and tests on.

``prepare`` turns a folder of face photos (``params.data.source``; aligned CelebA by default,
any folder with ``train/`` and ``test/`` works) into square crops at the profile's resolution,
stored as one ``uint8`` array per split so that a 2-core machine spends no time decoding JPEGs
during training. It also builds the evaluation masks:

* the paper's ten fixed squares (:func:`faceinpaint.masks.square_boxes`), test image ``i``
  paired with square ``i % 10``;
* NVIDIA irregular masks resized to the resolution, ``evaluate.irregular_per_bin`` from each
  of the six area bins (first half of every bin; the second half is for training).

Outputs (``artifacts/prepared/``): ``{train,test}_images.npy`` (N x R x R x 3 uint8),
``{train,test}_index.csv`` (row, source file, identity), ``square_masks.npy`` (10 x R x R),
``irregular_eval.npy`` / ``irregular_eval.csv`` (mask, file, bin, hole fraction),
``irregular_train.npy``, ``info.json`` (crop boxes, counts, skipped files, square boxes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import Config
from .masks import MaskError, irregular_bin_indices, load_mask_file, random_square, square_boxes, square_masks

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PREPARED_DIR = Path("artifacts/prepared")


class DataError(ValueError):
    """An input image or folder is unusable; the message names the file."""


# ------------------------------------------------------------------------------ preparation


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found (expected train/ and test/ under params data.source; run `dvc pull`?)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def crop_square(im: Image.Image, crop_box: tuple[int, int, int, int] | None, path: Path) -> Image.Image:
    """Crop the face square: ``crop_box`` in source pixels, or the centred square if None."""
    w, h = im.size
    if crop_box is None:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    else:
        box = crop_box
        if box[2] > w or box[3] > h:
            raise DataError(f"{path}: image is {w}x{h}, too small for crop_box {tuple(box)} (set data.crop_box: null for a centred square)")
    return im.crop(box)


def load_face(path: Path, crop_box, resolution: int) -> np.ndarray:
    """Decode, crop and resize one photo to ``R x R x 3`` uint8; :class:`DataError` names bad files."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    face = crop_square(rgb, crop_box, path)
    return np.asarray(face.resize((resolution, resolution), Image.LANCZOS), np.uint8)


def identity_box_fraction(cfg: Config) -> tuple[float, float, float, float]:
    """The face-recognition crop expressed as fractions of the prepared square."""
    ib, cb = cfg.data.identity_box, cfg.data.crop_box
    if ib is None:
        return (0.0, 0.0, 1.0, 1.0)
    if cb is None:
        raise DataError("data.identity_box needs data.crop_box (source pixels) to be mapped into the crop")
    side = cb[2] - cb[0]
    frac = ((ib[0] - cb[0]) / side, (ib[1] - cb[1]) / side, (ib[2] - cb[0]) / side, (ib[3] - cb[1]) / side)
    return tuple(min(1.0, max(0.0, f)) for f in frac)


def progress(items, what: str, unit: str):
    """``items`` with a progress bar (rate and ETA) on a terminal; the plain iterable otherwise
    (a log file or CI gets the stage's own log lines instead)."""
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=what, unit=unit, leave=False, disable=not sys.stderr.isatty())


def _prepare_split(cfg: Config, split: str, limit: int | None, out: Path) -> dict:
    files = list_images(Path(cfg.data.source) / split)
    if limit is not None:
        files = files[:limit]
    images, rows, skipped = [], [], []
    for path in progress(files, f"prepare {split}", "image"):
        try:
            images.append(load_face(path, cfg.data.crop_box, cfg.resolution))
        except DataError as err:
            if cfg.data.on_bad_file == "error":
                raise
            skipped.append(str(path))
            log.warning("skipping %s", err)
            continue
        rows.append({"row": len(rows), "file": str(path), "identity": path.parent.name})
    if not images:
        raise DataError(f"{Path(cfg.data.source) / split}: every image was skipped")
    np.save(out / f"{split}_images.npy", np.stack(images))
    pd.DataFrame(rows).to_csv(out / f"{split}_index.csv", index=False)
    if skipped:
        log.warning("%s: skipped %d unreadable files", split, len(skipped))
    return {"count": len(rows), "skipped": skipped}


def _load_masks(files: list[int], source: Path, resolution: int) -> np.ndarray:
    masks = []
    for i in progress(files, "prepare masks", "mask"):
        path = source / f"{i:05d}.png"
        if not path.is_file():
            raise MaskError(f"{path}: irregular mask file missing (run `dvc pull`)")
        masks.append(load_mask_file(path, resolution))
    return np.stack(masks)


def prepare(cfg: Config, out: Path = PREPARED_DIR, train_irregular_per_bin: int = 250) -> dict:
    """The ``prepare`` stage: face crops, square masks, irregular masks. Returns ``info``."""
    out.mkdir(parents=True, exist_ok=True)
    res = cfg.resolution
    info: dict = {
        "resolution": res,
        "source": cfg.data.source,
        "crop_box_source_px": cfg.data.crop_box,
        "identity_box_fraction": identity_box_fraction(cfg),
        "splits": {},
    }
    info["splits"]["train"] = _prepare_split(cfg, "train", cfg.data.max_train_images, out)
    info["splits"]["test"] = _prepare_split(cfg, "test", cfg.data.max_test_images, out)

    m = cfg.masks
    np.save(out / "square_masks.npy", square_masks(res, m.square_min_frac, m.square_max_frac))
    info["square_boxes"] = square_boxes(res, m.square_min_frac, m.square_max_frac)
    info["square_rule"] = "test image i uses square i % 10"

    source = Path(m.irregular_source)
    half = m.irregular_per_bin_file // 2
    eval_idx = irregular_bin_indices(m.irregular_bins, m.irregular_per_bin_file, cfg.evaluate.irregular_per_bin, 0, half)
    train_idx = irregular_bin_indices(m.irregular_bins, m.irregular_per_bin_file, train_irregular_per_bin, half, m.irregular_per_bin_file)
    eval_masks = _load_masks([i for b in eval_idx for i in b], source, res)
    rows = [
        {"mask": k, "file": f"{i:05d}.png", "bin": b, "hole_fraction": float(eval_masks[k].mean())}
        for k, (b, i) in enumerate((b, i) for b, idx in enumerate(eval_idx) for i in idx)
    ]
    np.save(out / "irregular_eval.npy", eval_masks)
    pd.DataFrame(rows).to_csv(out / "irregular_eval.csv", index=False)
    train_masks = _load_masks([i for b in train_idx for i in b], source, res)
    np.save(out / "irregular_train.npy", train_masks[train_masks.reshape(len(train_masks), -1).any(1)])
    info["irregular"] = {
        "eval_per_bin": cfg.evaluate.irregular_per_bin,
        "train_per_bin": train_irregular_per_bin,
        "eval_positions": f"first half of each bin (0..{half - 1})",
        "train_positions": f"second half of each bin ({half}..{m.irregular_per_bin_file - 1})",
        "mean_hole_fraction_per_bin": pd.DataFrame(rows).groupby("bin")["hole_fraction"].mean().round(4).to_dict(),
    }
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------------- datasets


def to_tensor_image(array: np.ndarray) -> torch.Tensor:
    """``(N x) H x W x 3`` uint8 -> ``(N x) 3 x H x W`` float32 in [-1, 1] (a copy: memory-mapped
    arrays are read once). The one uint8 -> tensor conversion; :func:`to_uint8_image` the inverse."""
    return torch.from_numpy(np.array(array, copy=True)).movedim(-1, -3).float().div_(127.5).sub_(1.0)


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """``(N x) 3 x H x W`` in [-1, 1] -> ``(N x) H x W x 3`` uint8 (clamped, rounded). The one
    tensor -> uint8 conversion (:func:`faceinpaint.tracking.image_to_uint8` uses it)."""
    t = tensor.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return t.movedim(-3, -1).cpu().numpy()


@dataclass
class PreparedData:
    """Arrays written by :func:`prepare` (memory-mapped)."""

    root: Path

    def _npy(self, name: str) -> np.ndarray:
        path = self.root / name
        if not path.is_file():
            raise DataError(f"{path}: prepared data missing (run `dvc repro prepare`)")
        return np.load(path, mmap_mode="r")

    def images(self, split: str) -> np.ndarray:
        return self._npy(f"{split}_images.npy")

    def index(self, split: str) -> pd.DataFrame:
        return pd.read_csv(self.root / f"{split}_index.csv")

    def square_masks(self) -> np.ndarray:
        return self._npy("square_masks.npy")

    def irregular_eval(self) -> tuple[np.ndarray, pd.DataFrame]:
        return self._npy("irregular_eval.npy"), pd.read_csv(self.root / "irregular_eval.csv")

    def irregular_train(self) -> np.ndarray:
        return self._npy("irregular_train.npy")

    def info(self) -> dict:
        return json.loads((self.root / "info.json").read_text())


class TrainingDataset(Dataset):
    """Training images with a fresh random mask per draw and random horizontal flips.

    Masks are random squares (sides ``square_min_frac``..``square_max_frac`` of the image,
    anywhere) or, with probability ``irregular_prob``, a training-half irregular mask with a
    random flip. The random stream of item ``i`` is seeded by ``(seed, epoch, i)`` so that a
    resumed run draws exactly what an uninterrupted one would (call :meth:`set_epoch`).
    """

    def __init__(self, images: np.ndarray, irregular: np.ndarray | None, *, seed: int,
                 square_min_frac: float = 0.125, square_max_frac: float = 0.25, irregular_prob: float = 0.25,
                 flip: bool = True):
        self.images = images
        self.irregular = irregular if irregular is not None and len(irregular) else None
        self.seed = seed
        self.min_frac, self.max_frac = square_min_frac, square_max_frac
        self.irregular_prob = irregular_prob if self.irregular is not None else 0.0
        self.flip = flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        image = np.asarray(self.images[i])
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        res = image.shape[0]
        if self.irregular_prob and rng.random() < self.irregular_prob:
            mask = np.asarray(self.irregular[rng.integers(len(self.irregular))])
            if rng.random() < 0.5:
                mask = mask[:, ::-1]
        else:
            mask = random_square(rng, res, self.min_frac, self.max_frac)
        return {
            "image": to_tensor_image(image),
            "mask": torch.from_numpy(np.array(mask, dtype=np.float32))[None],
            "index": i,
        }


class EvaluationDataset(Dataset):
    """Test images paired with fixed masks: image ``i`` gets ``masks[assignment(i)]``.

    For the square set the rule is ``i % 10`` (PAPER.md sec. 6a). For the irregular set every
    mask is paired with test image ``mask_index % n_images``.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, pairs: list[tuple[int, int]]):
        self.images, self.masks, self.pairs = images, masks, pairs

    @classmethod
    def squares(cls, images: np.ndarray, masks: np.ndarray, limit: int | None = None) -> "EvaluationDataset":
        n = len(images) if limit is None else min(limit, len(images))
        return cls(images, masks, [(i, i % len(masks)) for i in range(n)])

    @classmethod
    def irregular(cls, images: np.ndarray, masks: np.ndarray) -> "EvaluationDataset":
        return cls(images, masks, [(k % len(images), k) for k in range(len(masks))])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        i, m = self.pairs[k]
        return {
            "image": to_tensor_image(np.asarray(self.images[i])),
            "mask": torch.from_numpy(np.array(self.masks[m], dtype=np.float32))[None],
            "index": i,
            "mask_id": m,
        }


def training_dataset(cfg: Config, prepared: PreparedData | None = None) -> TrainingDataset:
    prepared = prepared or PreparedData(PREPARED_DIR)
    return TrainingDataset(
        prepared.images("train"), prepared.irregular_train(), seed=cfg.seed,
        square_min_frac=cfg.masks.square_min_frac, square_max_frac=cfg.masks.square_max_frac,
        irregular_prob=cfg.masks.train_irregular_prob,
    )
