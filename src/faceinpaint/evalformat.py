"""The evaluation folder: what the ``evaluate`` stage writes and the ``report`` stage reads.

One evaluation path serves every model (PAPER.md sec. 6): :mod:`faceinpaint.evaluate` scores a
model with :class:`faceinpaint.metrics.MetricSuite` and hands the results to
:func:`write_eval_outputs`; :mod:`faceinpaint.report` reads every model's folder back with
:func:`load_eval_dir`. Both sides check the same format, so a folder the report could not read
is never written. A model whose folder is missing is "not run" (:data:`NOT_RUN`).

Evaluation folder format (``artifacts/eval/<model>/``, one per model; ``<model>`` is the
machine name, e.g. ``full``, ``variant1``, ``variant2``, ``pconv``, ``rfr``, ``biharmonic``)
---------------------------------------------------------------------------------------------

``per_image.csv`` -- one row per (test image, mask) pair, every mask set, columns in this order:

    ============== ====== ===================================================================
    image_id       str    the test image, identical across models (e.g. its path under the
                          test folder, or its row in the prepared test array)
    mask_set       str    ``square`` (the ten fixed squares, test image ``i`` with square
                          ``i % 10``) or ``irregular`` (NVIDIA irregular masks)
    mask_id        int    square index 0-9, or the irregular mask's file index
    area_bin       str    ``0-10%`` ... ``50-60%`` (``>60%`` beyond): bin of ``hole_fraction``
    hole_fraction  float  hole pixels / all pixels at the evaluation resolution
    psnr           float  dB, :data:`faceinpaint.metrics.PSNR_SETTINGS`
    ssim           float  :data:`faceinpaint.metrics.SSIM_SETTINGS`
    lpips          float  LPIPS distance, backbone in ``summary.json``
    id_sim         float  cosine of identity embeddings of composite and original
    hole_l1        float  mean absolute error inside the hole, on the [0, 1] scale
    psnr_hole      float  dB, PSNR inside the hole only (:func:`faceinpaint.metrics.psnr_hole`)
    l1             float  mean absolute error over the whole image, on the [0, 1] scale
                          (:func:`faceinpaint.metrics.mean_abs_error`)
    ============== ====== ===================================================================

    ``psnr_hole`` and ``l1`` came later: a folder written before them reads without them.

    ``(image_id, mask_set, mask_id)`` is unique. In the square set every image appears once.

``summary.json`` -- square-mask results of the model (``MetricSuite.summary("square")`` plus
the model's facts)::

    {"model": "full",                       # the folder name
     "mask_set": "square", "n_images": 1200, "resolution": 64,
     "psnr": 31.2, "ssim": 0.95, "id_sim": 0.91,     # means over the square set
     "lpips_<backbone>": 0.04,              # metric_key("lpips", backbones["lpips"])
     "fd_<backbone>": 12.3,                 # metric_key("fd", backbones["fd"])
     "fd_faceapi-resnet29": 0.02, "hole_l1": 0.03,    # FACE_FD and the hole L1 (read when present)
     "psnr_hole": 18.1, "l1": 0.004,        # hole-only PSNR, whole-image L1 (read when present)
     "fd_provenance": {"<fd key>": {"backbone": ..., "weights_sha256": ..., "n_images": 1200,
                       "resize": {"size": 299, "filter": ...}, "input_range": [-1, 1]}, ...},
                                            # every FD's measuring conditions (read when present)
     "external": {"predictions": "<folder>", "format": "png", "manifest_sha256": ...},
     "known_pixels": {"changed_fraction": 0.0, ...},  # external methods only
     "backbones": {"fd": "<fid extractor .name>", "lpips": "<lpips .name>", "id": "<identity net>"},
     "psnr_settings": {...}, "ssim_settings": {...},  # the scikit-image keyword arguments
     "square_boxes": [[x0, y0, x1, y1], ...],         # the ten squares in pixels, x1/y1 exclusive
     "training": {"<stage>": {"images_seen": 48000, "train_time_s": 3600.0}, ...}}
                                            # every training stage the model depends on
                                            # (e.g. stylegan, structure, texture); {} for the
                                            # classical fill

``features.npz`` -- FD features of the square-mask set, rows in one order:
``image_id`` (N,) str; ``composite`` (N, D) float32, the model's composites; ``real`` (N, D)
float32, the originals through the same extractor. The originals' features are stored with
each model rather than in one shared file so that every ``evaluate`` stage owns all of its
outputs (DVC forbids two stages writing one file) and each FD is recomputable from its folder.

``samples.npz`` -- the figure images, the same test images and masks for every model (pick
them with :func:`figure_sample_indices`, build them with :func:`samples_from_batch`):
``image_id`` (K,) str; ``mask_id`` (K,) int64; ``original``, ``damaged``, ``composite``
(K, H, W, 3) uint8; ``mask`` (K, H, W) uint8, 255 = hole, 0 = known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .data import to_uint8_image
from .metrics import (AREA_BIN_LABELS, AREA_BIN_OVERFLOW, FACE_FD_BACKBONE, LATER_ROW_COLUMNS, MASK_SETS, ROW_COLUMNS,
                      frechet_distance, metric_key)
from .models import INPAINTERS, MODELS

NOT_RUN = "not run"

CLASSICAL = MODELS["biharmonic"].display
STAGE1 = MODELS["structure"].display
DEFAULT_MODELS: dict[str, str] = {MODELS[m].display: m for m in INPAINTERS}  # display -> eval folder
# summary.json key of the Frechet distance on the face-recognition embeddings
FACE_FD = metric_key("fd", FACE_FD_BACKBONE)

SUMMARY_KEYS = (
    "model", "mask_set", "n_images", "resolution", "psnr", "ssim", "id_sim", "backbones",
    "psnr_settings", "ssim_settings", "square_boxes", "training",
)
SAMPLE_KEYS = ("image_id", "mask_id", "original", "damaged", "mask", "composite")
FEATURE_KEYS = ("image_id", "composite", "real")


class EvalFormatError(ValueError):
    """An evaluation folder does not follow the format of this module; the message names it."""


# ------------------------------------------------------------------------- writing (evaluate)


def figure_sample_indices(n_images: int, count: int) -> list[int]:
    """Test images shown in the figures: spread over the test set, with ``count`` different
    squares when ``count <= 10`` (image ``i`` has square ``i % 10``; index ``k * step + k % 10``
    has square ``k % 10`` because ``step`` is a multiple of 10)."""
    if not 1 <= count <= n_images:
        raise ValueError(f"cannot pick {count} figure images from {n_images} test images")
    step = (n_images // count) // 10 * 10
    if step == 0:
        return list(range(count))
    return [k * step + k % 10 for k in range(count)]


def samples_from_batch(
    image_ids: Sequence[str],
    mask_ids: Sequence[int],
    original: torch.Tensor,
    mask: torch.Tensor,
    composite: torch.Tensor,
) -> dict[str, np.ndarray]:
    """``samples.npz`` arrays from tensors (images in [-1, 1], masks ``N x 1 x H x W`` hole = 1).
    The damaged input is ``original * (1 - mask)`` (docs/CONVENTIONS.md)."""
    hole = mask > 0.5
    return {
        "image_id": np.array([str(i) for i in image_ids], dtype=str),
        "mask_id": np.array(mask_ids, dtype=np.int64),
        "original": to_uint8_image(original),
        "damaged": to_uint8_image(original * (~hole)),
        "mask": hole[:, 0].to(torch.uint8).mul(255).cpu().numpy(),
        "composite": to_uint8_image(composite),
    }


def _check_rows(rows: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in ROW_COLUMNS if c not in rows.columns and c not in LATER_ROW_COLUMNS]
    if missing:
        raise EvalFormatError(f"{where}: per-image rows lack columns {missing}")
    rows = rows[[c for c in ROW_COLUMNS if c in rows.columns]].copy()  # a folder from before the later columns lacks them
    rows["image_id"] = rows["image_id"].astype(str)
    rows["mask_id"] = rows["mask_id"].astype(np.int64)
    bad_sets = sorted(set(rows["mask_set"]) - set(MASK_SETS))
    if bad_sets:
        raise EvalFormatError(f"{where}: unknown mask_set values {bad_sets}; expected {MASK_SETS}")
    bad_bins = sorted(set(rows["area_bin"]) - {*AREA_BIN_LABELS, AREA_BIN_OVERFLOW})
    if bad_bins:
        raise EvalFormatError(f"{where}: unknown area_bin values {bad_bins}; use faceinpaint.metrics.area_bin")
    if rows.duplicated(["image_id", "mask_set", "mask_id"]).any():
        raise EvalFormatError(f"{where}: (image_id, mask_set, mask_id) is not unique")
    square = rows[rows["mask_set"] == "square"]
    if square.empty:
        raise EvalFormatError(f"{where}: no square-mask rows")
    if square["image_id"].duplicated().any():
        raise EvalFormatError(f"{where}: a test image appears twice in the square-mask set")
    return rows


def _check_summary(summary: dict, where: str) -> None:
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise EvalFormatError(f"{where}: summary lacks keys {missing}")
    for metric in ("fd", "lpips"):
        key = metric_key(metric, summary["backbones"][metric])
        if key not in summary:
            raise EvalFormatError(f"{where}: summary lacks {key!r} (backbones say {summary['backbones'][metric]!r})")
    if summary["mask_set"] != "square":
        raise EvalFormatError(f"{where}: summary must describe the square-mask set, got {summary['mask_set']!r}")
    for stage, facts in summary["training"].items():
        if set(facts) != {"images_seen", "train_time_s"}:
            raise EvalFormatError(f"{where}: training[{stage!r}] must have exactly images_seen and train_time_s")


def _check_features(feats: dict, square_ids: set[str], where: str) -> None:
    missing = [k for k in FEATURE_KEYS if k not in feats]
    if missing:
        raise EvalFormatError(f"{where}: features lack {missing}")
    n = len(feats["image_id"])
    if feats["composite"].shape != feats["real"].shape or feats["composite"].ndim != 2 or feats["composite"].shape[0] != n:
        raise EvalFormatError(f"{where}: composite {feats['composite'].shape} and real {feats['real'].shape} features must both be {n} x D")
    if set(map(str, feats["image_id"])) != square_ids or n != len(square_ids):
        raise EvalFormatError(f"{where}: feature image_ids are not the square-mask set's images")


def _check_samples(samples: dict, where: str) -> None:
    missing = [k for k in SAMPLE_KEYS if k not in samples]
    if missing:
        raise EvalFormatError(f"{where}: samples lack {missing}")
    k, h, w, _ = samples["original"].shape
    for name in ("original", "damaged", "composite"):
        if samples[name].shape != (k, h, w, 3) or samples[name].dtype != np.uint8:
            raise EvalFormatError(f"{where}: samples[{name!r}] must be {k} x {h} x {w} x 3 uint8, got {samples[name].shape} {samples[name].dtype}")
    if samples["mask"].shape != (k, h, w) or samples["mask"].dtype != np.uint8 or not np.isin(samples["mask"], (0, 255)).all():
        raise EvalFormatError(f"{where}: samples['mask'] must be {k} x {h} x {w} uint8 with values 0 / 255")
    if len(samples["image_id"]) != k or len(samples["mask_id"]) != k:
        raise EvalFormatError(f"{where}: samples need one image_id and mask_id per image")


def write_eval_outputs(out_dir: str | Path, rows_df: pd.DataFrame, summary: dict, feats: dict, samples: dict) -> Path:
    """Write one model's evaluation folder in the format of this module's docstring.

    ``rows_df`` is :meth:`MetricSuite.rows`, ``summary`` :meth:`MetricSuite.summary` with the
    model's facts added (``model``, ``resolution``, ``square_boxes``, ``training``), ``feats``
    :meth:`MetricSuite.features`, ``samples`` :func:`samples_from_batch`. Everything is checked
    before anything is written; a violation raises :class:`EvalFormatError`.
    """
    out_dir = Path(out_dir)
    rows = _check_rows(rows_df, str(out_dir))
    _check_summary(summary, str(out_dir))
    _check_features(feats, set(rows.loc[rows["mask_set"] == "square", "image_id"]), str(out_dir))
    _check_samples(samples, str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out_dir / "per_image.csv", index=False)
    # numpy scalars (e.g. a step counter read from a checkpoint) are written as plain numbers.
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=lambda v: v.item()) + "\n")
    np.savez_compressed(
        out_dir / "features.npz",
        image_id=np.asarray(feats["image_id"], dtype=str),
        composite=np.asarray(feats["composite"], np.float32),
        real=np.asarray(feats["real"], np.float32),
    )
    np.savez_compressed(out_dir / "samples.npz", **{k: np.asarray(samples[k]) for k in SAMPLE_KEYS})
    return out_dir


# ---------------------------------------------------------------------------- reading (report)


@dataclass
class EvalResult:
    """One model's evaluation folder, read back."""

    display: str
    name: str
    rows: pd.DataFrame
    summary: dict
    features: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]

    def square_rows(self) -> pd.DataFrame:
        return self.rows[self.rows["mask_set"] == "square"].sort_values("image_id").reset_index(drop=True)

    def value(self, metric: str) -> float:
        """Square-mask mean of ``metric`` (``psnr``, ``ssim``, ``id_sim``, ``lpips``, ``fd``)."""
        if metric in ("fd", "lpips"):
            return float(self.summary[metric_key(metric, self.summary["backbones"][metric])])
        return float(self.summary[metric])

    def sorted_features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image_id, real, composite) in image_id order, the order every model shares."""
        order = np.argsort(self.features["image_id"])
        return self.features["image_id"][order], self.features["real"][order], self.features["composite"][order]


def load_eval_dir(folder: str | Path, display: str) -> EvalResult | None:
    """Read ``folder`` (format: module docstring); ``None`` when the model was not run."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    paths = {name: folder / name for name in ("per_image.csv", "summary.json", "features.npz", "samples.npz")}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise EvalFormatError(f"{folder}: incomplete evaluation folder, missing {absent}")
    rows = _check_rows(pd.read_csv(paths["per_image.csv"], dtype={"image_id": str}), str(paths["per_image.csv"]))
    summary = json.loads(paths["summary.json"].read_text())
    _check_summary(summary, str(paths["summary.json"]))
    with np.load(paths["features.npz"]) as f:
        features = {k: f[k] for k in FEATURE_KEYS if k in f}
    _check_features(features, set(rows.loc[rows["mask_set"] == "square", "image_id"]), str(paths["features.npz"]))
    with np.load(paths["samples.npz"]) as f:
        samples = {k: f[k] for k in SAMPLE_KEYS if k in f}
    _check_samples(samples, str(paths["samples.npz"]))
    return EvalResult(display, folder.name, rows, summary, features, samples)


# ------------------------------------------------------------------- learning-curve files


def curve_column(df: pd.DataFrame, panel: str) -> str | None:
    """The CSV column of a panel: ``lpips`` / ``fd`` match their backbone-named key."""
    if panel in df.columns:
        return panel
    prefix = {"lpips": "lpips_", "fd": "fd_"}.get(panel)
    matches = [c for c in df.columns if prefix and c.startswith(prefix) and c != FACE_FD]
    return matches[0] if matches else None


def on_curve_subset(result: EvalResult | None, n: int) -> dict[str, float]:
    """A model's metrics on the learning curves' images, the first ``n`` test images with their
    squares, from its evaluation's per-image rows and FD features: ``psnr``, ``ssim``, ``lpips``,
    ``hole_l1``, ``id_sim`` and ``fd`` (the evaluation's FD backbone; the face-embedding FD needs
    features the evaluation folder does not keep). ``inpaint_biharmonic``'s is the curves'
    horizontal line."""
    if result is None:
        return {}
    rows = result.rows[result.rows["mask_set"] == "square"].head(n)  # evaluation order: test image 0, 1, ...
    out = {m: float(rows[m].mean()) for m in ("psnr", "ssim", "lpips", "hole_l1", "id_sim") if m in rows}
    ids, real, fake = result.sorted_features()
    keep = np.isin(ids, rows["image_id"].to_numpy())
    if keep.sum() >= 2:
        out["fd"] = frechet_distance(real[keep], fake[keep])
    return out


#: ``source`` of a learning-curve point: taken by the training run, or (a run that ended between
#: two curve budgets) its final budget read from the model's evaluation (:func:`with_final_point`)
FROM_TRAINING, FROM_EVALUATION = "training", "evaluation"


def with_final_point(curve: pd.DataFrame, result: EvalResult | None, n: int) -> pd.DataFrame:
    """``curve`` (a model's ``curve_<model>.csv``) with a ``source`` column, and, when the
    model's training ended past its last curve budget, one more point at its final images shown:
    :func:`on_curve_subset` of its evaluation (the same metric code on the same ``n`` images and
    masks; the face-embedding FD left empty). A run that ended on a curve budget, a model without
    an evaluation or one the evaluation saw no training facts for, is returned as it is."""
    curve = curve.assign(source=FROM_TRAINING)
    if result is None:
        return curve
    seen = int(result.summary.get("training", {}).get(result.name, {}).get("images_seen", 0))
    if seen <= 0 or (len(curve) and seen <= int(curve["images_seen"].max())):
        return curve
    point = on_curve_subset(result, n)
    backbones = result.summary.get("backbones", {})
    row: dict = {"images_seen": seen, "source": FROM_EVALUATION}
    for metric, value in point.items():
        row[metric_key(metric, backbones[metric]) if metric in ("fd", "lpips") else metric] = value
    return pd.concat([curve, pd.DataFrame([row])], ignore_index=True)
