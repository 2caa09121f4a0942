"""The ``report`` stage: Tables 1-2, Figures 3 and 5, the claims C1-C3, irregular masks per area bin.

PAPER.md sec. 6 gives the tables and figures to reproduce, sec. 6a the gaps this suite closes
(the ten squares, the SSIM settings), sec. 7 the claims. One evaluation path serves every
model: the ``evaluate`` stage scores a model with :class:`faceinpaint.metrics.MetricSuite` and
hands the results to :func:`write_eval_outputs`; :func:`build_report` reads every model's
folder back and writes ``reports/``.

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
    ============== ====== ===================================================================

    ``(image_id, mask_set, mask_id)`` is unique. In the square set every image appears once.

``summary.json`` -- square-mask results of the model (``MetricSuite.summary("square")`` plus
the model's facts)::

    {"model": "full",                       # the folder name
     "mask_set": "square", "n_images": 1200, "resolution": 64,
     "psnr": 31.2, "ssim": 0.95, "id_sim": 0.91,     # means over the square set
     "lpips_<backbone>": 0.04,              # metric_key("lpips", backbones["lpips"])
     "fd_<backbone>": 12.3,                 # metric_key("fd", backbones["fd"])
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

Report outputs (``reports/``)
-----------------------------
``table1.{md,csv}``, ``table2.{md,csv}``; ``figure3.png``, ``figure5.png``;
``claims.{md,json}``; ``irregular_bins.{md,csv}``, ``irregular_psnr_vs_area.png``;
``metrics.json`` (flat, for ``dvc metrics diff``: ``<model>.psnr``, ``<model>.ssim``,
``<model>.id_sim``, ``<model>.fd_<backbone>``, ``<model>.lpips_<backbone>`` per evaluated model).
A model whose folder is missing appears as "not run", so the report works on partial pipelines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from .data import to_uint8_image
from .models import INPAINTERS, MODELS
from .metrics import (
    AREA_BIN_LABELS,
    AREA_BIN_OVERFLOW,
    DOES_NOT_HOLD,
    FACE_FD_BACKBONE,
    HIGHER_IS_BETTER,
    HOLDS,
    INCONCLUSIVE,
    MASK_SETS,
    ROW_COLUMNS,
    FD_INTERVAL,
    exact_fd,
    fd_half_samples,
    half_sample_interval,
    frechet_distance,
    metric_key,
    paired_bootstrap,
    percentile_interval,
    verdict,
)

NOT_RUN = "not run"

CLASSICAL = MODELS["biharmonic"].display
STAGE1 = MODELS["structure"].display
DEFAULT_MODELS: dict[str, str] = {MODELS[m].display: m for m in INPAINTERS}  # display -> eval folder

# PAPER.md sec. 6, Tables 1 and 2: PSNR (dB) / SSIM / FID (Inception-v3), CelebA-HQ 256x256.
PAPER_NUMBERS: dict[str, dict[str, float]] = {
    "PConv": {"psnr": 33.058, "ssim": 0.966, "fid": 67.956},
    "RFR": {"psnr": 32.252, "ssim": 0.948, "fid": 106.312},
    "Ours": {"psnr": 36.733, "ssim": 0.977, "fid": 15.077},
    "Variant 1": {"psnr": 34.364, "ssim": 0.959, "fid": 33.357},
    "Variant 2": {"psnr": 36.239, "ssim": 0.973, "fid": 20.534},
}
TABLES: dict[str, tuple[str, ...]] = {
    "table1": ("PConv", "RFR", "Ours"),
    "table2": ("Variant 1", "Variant 2", "Ours"),
    # not in the paper: the structure reconstructor's composite alone (PAPER.md sec. 2)
    "table_stage1": (STAGE1,),
}
TABLE_TITLES: dict[str, str] = {
    "table1": "Table 1: comparison with PConv and RFR",
    "table2": "Table 2: ablation (variants)",
    "table_stage1": "Stage 1 alone: the pSp structure reconstructor's composite against the classical fill",
}
FIGURES: dict[str, tuple[str, ...]] = {
    "figure3": ("PConv", "RFR", "Ours"),
    "figure5": ("Variant 1", "Variant 2", "Ours"),
    "figure_stage1": (STAGE1, CLASSICAL),
}


@dataclass(frozen=True)
class Claim:
    """A claim of PAPER.md sec. 7: each (better, worse) pair must win on every metric."""

    id: str
    statement: str
    comparisons: tuple[tuple[str, str], ...]


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "Ours beats PConv and RFR on PSNR, SSIM and FID", (("Ours", "PConv"), ("Ours", "RFR"))),
    Claim("C2", "Variant 2 beats Variant 1 (the structure reconstructor helps)", (("Variant 2", "Variant 1"),)),
    Claim("C3", "Ours beats Variant 2 (attention from several levels helps)", (("Ours", "Variant 2"),)),
)
CLAIM_METRICS = ("psnr", "ssim", "fd")
# The classical fill must not beat a learned model unnoticed; checked on per-image metrics.
CLASSICAL_CHECK_METRICS = ("psnr", "ssim")
IRREGULAR_METRICS = ("psnr", "ssim", "lpips")

SUMMARY_KEYS = (
    "model", "mask_set", "n_images", "resolution", "psnr", "ssim", "id_sim", "backbones",
    "psnr_settings", "ssim_settings", "square_boxes", "training",
)
SAMPLE_KEYS = ("image_id", "mask_id", "original", "damaged", "mask", "composite")
FEATURE_KEYS = ("image_id", "composite", "real")

# Figure grid geometry in pixels: panels are integer upscales of the images (nearest
# neighbour, so no pixel is invented) at least FIGURE_PANEL_MIN_PX on a side.
FIGURE_PANEL_MIN_PX = 128
FIGURE_GAP_PX = 4
FIGURE_HEADER_PX = 28
FIGURE_DPI = 100
HOLE_DISPLAY_RGB = (255, 255, 255)


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
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise EvalFormatError(f"{where}: per-image rows lack columns {missing}")
    rows = rows[list(ROW_COLUMNS)].copy()
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


# ------------------------------------------------------------------------------------ tables


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def training_text(training: dict) -> str:
    """``stylegan 48.0k img / 1.20 h; texture ...`` or ``no training``."""
    if not training:
        return "no training"
    return "; ".join(f"{stage} {_fmt_count(int(f['images_seen']))} img / {_fmt_duration(float(f['train_time_s']))}" for stage, f in training.items())


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _n_distinct(results: Sequence[EvalResult], get) -> int:
    return len({json.dumps(get(r), sort_keys=True) for r in results})


def _caption(results: Sequence[EvalResult]) -> list[str]:
    """What every number of a table means: masks, resolution, settings, backbones."""
    if not results:
        return ["No model of this table has been evaluated yet."]
    ref = results[0].summary
    res, boxes = ref["resolution"], ref["square_boxes"]
    lines = [
        f"Square masks: the ten fixed squares of PAPER.md sec. 6a, test image i with square i mod 10; "
        f"boxes (x0, y0, x1, y1) at {res}x{res}: {', '.join(str(tuple(b)) for b in boxes)}.",
        f"Resolution {res}x{res} (the paper: CelebA-HQ at 256x256); {ref['n_images']} test images.",
        f"PSNR: skimage.metrics.peak_signal_noise_ratio on float RGB in [0, 1] ({_settings_text(ref['psnr_settings'])}).",
        f"SSIM: skimage.metrics.structural_similarity on float RGB in [0, 1], per channel then averaged "
        f"({_settings_text(ref['ssim_settings'])}; Wang et al. 2004).",
        f"FD: Frechet distance (pytorch-fid) between features of composites and originals from "
        f"`{ref['backbones']['fd']}`. The paper's FID uses Inception-v3 pool3: the columns are comparable "
        f"only when the backbone is Inception.",
        f"LPIPS: `{ref['backbones']['lpips']}`.",
        f"ID sim: cosine of `{ref['backbones']['id']}` embeddings of composite and original. It is the same network "
        f"as the ID loss of the structure reconstructor (PAPER.md sec. 2), so models trained with that loss "
        f"(Ours, Variant 2) are scored by the network they were optimised against.",
        "Training: images shown and wall time of every training stage the model depends on.",
    ]
    for what, get in (
        ("resolution", lambda r: r.summary["resolution"]),
        ("test images", lambda r: r.square_rows()["image_id"].tolist()),
        ("backbones", lambda r: r.summary["backbones"]),
        ("PSNR/SSIM settings", lambda r: [r.summary["psnr_settings"], r.summary["ssim_settings"]]),
        ("square masks", lambda r: r.summary["square_boxes"]),
    ):
        if _n_distinct(results, get) > 1:
            lines.append(f"**Warning: the models differ in {what}; their numbers are not comparable.**")
    return lines


def table_frame(names: Sequence[str], results: dict[str, EvalResult | None], eval_names: Mapping[str, str]) -> pd.DataFrame:
    """One row per model (``names`` then the classical row): our numbers beside the paper's."""
    records = []
    for display in dict.fromkeys((*names, CLASSICAL)):
        r = results.get(display)
        paper = PAPER_NUMBERS.get(display, {})
        record = {
            "model": display,
            "eval_dir": eval_names.get(display, ""),
            "status": "ok" if r is not None else NOT_RUN,
            "psnr": r.value("psnr") if r else math.nan,
            "psnr_paper": paper.get("psnr", math.nan),
            "ssim": r.value("ssim") if r else math.nan,
            "ssim_paper": paper.get("ssim", math.nan),
            "fd": r.value("fd") if r else math.nan,
            "fid_paper": paper.get("fid", math.nan),
            "fd_backbone": r.summary["backbones"]["fd"] if r else "",
            "lpips": r.value("lpips") if r else math.nan,
            "lpips_backbone": r.summary["backbones"]["lpips"] if r else "",
            "id_sim": r.value("id_sim") if r else math.nan,
            "n_images": r.summary["n_images"] if r else 0,
            "resolution": r.summary["resolution"] if r else 0,
            "images_seen": sum(int(f["images_seen"]) for f in r.summary["training"].values()) if r else 0,
            "train_time_s": sum(float(f["train_time_s"]) for f in r.summary["training"].values()) if r else 0.0,
            "training": training_text(r.summary["training"]) if r else "",
        }
        records.append(record)
    return pd.DataFrame(records)


def table_markdown(title: str, frame: pd.DataFrame, results: Sequence[EvalResult]) -> str:
    header = ["Model", "PSNR", "PSNR (paper)", "SSIM", "SSIM (paper)", "FD", "FID (paper)", "LPIPS", "ID sim", "Training"]
    rows = []
    for rec in frame.to_dict("records"):
        if rec["status"] == NOT_RUN:
            rows.append([rec["model"], NOT_RUN, _fmt(rec["psnr_paper"], 3), NOT_RUN, _fmt(rec["ssim_paper"], 3), NOT_RUN,
                         _fmt(rec["fid_paper"], 3), NOT_RUN, NOT_RUN, "—"])
            continue
        rows.append([
            rec["model"], _fmt(rec["psnr"], 3), _fmt(rec["psnr_paper"], 3), _fmt(rec["ssim"], 4), _fmt(rec["ssim_paper"], 3),
            _fmt(rec["fd"], 3), _fmt(rec["fid_paper"], 3), _fmt(rec["lpips"], 4), _fmt(rec["id_sim"], 4), rec["training"],
        ])
    caption = "\n".join(f"- {line}" for line in _caption(results))
    return f"# {title}\n\n{caption}\n\n{_markdown_table(header, rows)}\n"


# ----------------------------------------------------------------------------------- figures


def _panel_scale(height: int, width: int) -> int:
    return max(1, math.ceil(FIGURE_PANEL_MIN_PX / min(height, width)))


def figure_canvas_size(n_rows: int, n_cols: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure grid of ``height x width`` images."""
    scale = _panel_scale(height, width)
    return (
        n_cols * width * scale + (n_cols + 1) * FIGURE_GAP_PX,
        FIGURE_HEADER_PX + n_rows * height * scale + (n_rows + 1) * FIGURE_GAP_PX,
    )


def _common_samples(results: Sequence[EvalResult], figure: str) -> dict[str, np.ndarray]:
    """The samples every model of a figure shares; an error if any shows other images or masks."""
    ref = results[0]
    for r in results[1:]:
        for key in ("image_id", "mask_id", "original", "mask"):
            if not np.array_equal(ref.samples[key], r.samples[key]):
                raise EvalFormatError(f"{figure}: samples of {ref.name!r} and {r.name!r} differ in {key!r}; every column must show the same images and masks")
    return ref.samples


def render_grid(path: Path, columns: Sequence[tuple[str, np.ndarray | None]]) -> None:
    """PNG grid: one column per ``(title, K x H x W x 3 uint8 or None)``, ``None`` = not run.

    Every panel is an integer nearest-neighbour upscale placed on exact pixel boundaries, so the
    PNG shows the evaluated pixels themselves.
    """
    k, h, w, _ = next(images for _, images in columns if images is not None).shape
    width_px, height_px = figure_canvas_size(k, len(columns), h, w)
    scale = _panel_scale(h, w)
    pw, ph = w * scale, h * scale
    fig = Figure(figsize=(width_px / FIGURE_DPI, height_px / FIGURE_DPI), dpi=FIGURE_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    for c, (title, images) in enumerate(columns):
        x0 = FIGURE_GAP_PX + c * (pw + FIGURE_GAP_PX)
        short = len(title) <= 18  # a longer title goes on two smaller lines to fit the header
        label = title if short else title.replace(" (", "\n(", 1)
        fig.text((x0 + pw / 2) / width_px, 1 - FIGURE_HEADER_PX / 2 / height_px, label, ha="center", va="center",
                 fontsize=10 if short else 8)
        for row in range(k):
            y0 = FIGURE_HEADER_PX + FIGURE_GAP_PX + row * (ph + FIGURE_GAP_PX)
            ax = fig.add_axes((x0 / width_px, 1 - (y0 + ph) / height_px, pw / width_px, ph / height_px))
            ax.set_axis_off()
            if images is None:
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, color="0.85"))
                ax.text(0.5, 0.5, NOT_RUN, ha="center", va="center", fontsize=9, transform=ax.transAxes)
                continue
            big = np.repeat(np.repeat(images[row], scale, axis=0), scale, axis=1)
            ax.imshow(big, interpolation="none", extent=(0, pw, ph, 0))
    fig.savefig(path, dpi=FIGURE_DPI, facecolor="white")


def write_figure(path: Path, names: Sequence[str], results: dict[str, EvalResult | None], reference: EvalResult) -> None:
    """PAPER.md sec. 6, Figures 3 and 5: damaged input (hole in white) | one column per model | original."""
    present = [results[n] for n in names if results.get(n) is not None]
    samples = _common_samples([reference, *present], path.stem)
    damaged = samples["damaged"].copy()
    damaged[samples["mask"] == 255] = HOLE_DISPLAY_RGB
    columns: list[tuple[str, np.ndarray | None]] = [("damaged input", damaged)]
    columns += [(n, results[n].samples["composite"] if results.get(n) is not None else None) for n in names]
    columns.append(("original", samples["original"]))
    render_grid(path, columns)


# ------------------------------------------------------------------------------------ claims


def _paired_square(a: EvalResult, b: EvalResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    ra, rb = a.square_rows(), b.square_rows()
    if ra["image_id"].tolist() != rb["image_id"].tolist() or ra["mask_id"].tolist() != rb["mask_id"].tolist():
        raise EvalFormatError(f"{a.name!r} and {b.name!r} were not evaluated on the same square-mask images and masks")
    return ra[metric].to_numpy(), rb[metric].to_numpy()


class ClaimTester:
    """Paired bootstrap comparisons between evaluated models (PAPER.md sec. 7).

    Every model's FD half-sample values are computed once, on halves drawn with one seed over
    the test images in ``image_id`` order; differences of two models' values are then paired,
    image for image, as :func:`faceinpaint.metrics.paired_interval_fd` pairs them, and the
    interval is :func:`faceinpaint.metrics.half_sample_interval` around the difference of the
    full-set FDs (:func:`faceinpaint.metrics.exact_fd`; the tables show pytorch-fid's value).
    An FD resample costs an eigenproblem of the size of the test set (about 0.1 s at 1,200
    images on two cores), a per-image resample microseconds; hence two resample counts.
    """

    def __init__(self, results: dict[str, EvalResult | None], n_resamples: int, n_resamples_fd: int, seed: int,
                 confidence: float = 0.95):
        self.results, self.n, self.n_fd, self.seed, self.confidence = results, n_resamples, n_resamples_fd, seed, confidence
        self._fd: dict[str, tuple[np.ndarray, float, np.ndarray]] = {}

    def _fd_distribution(self, r: EvalResult) -> tuple[np.ndarray, float, np.ndarray]:
        if r.display not in self._fd:
            ids, real, fake = r.sorted_features()
            # The full-sample FD is the one in summary.json (pytorch-fid on these features).
            self._fd[r.display] = (ids, exact_fd(real, fake), fd_half_samples(real, fake, self.n_fd, self.seed))
        return self._fd[r.display]

    def compare(self, better: str, worse: str, metric: str) -> dict:
        """Interval of (better - worse) on ``metric`` and the verdict on "better beats worse"."""
        record = {"better": better, "worse": worse, "metric": metric, "higher_is_better": HIGHER_IS_BETTER[metric]}
        a, b = self.results.get(better), self.results.get(worse)
        if a is None or b is None:
            missing = [n for n, r in ((better, a), (worse, b)) if r is None]
            return {**record, "estimate": None, "lo": None, "hi": None, "n_images": 0, "verdict": NOT_RUN, "missing": missing}
        if metric == "fd":
            ids_a, fd_a, dist_a = self._fd_distribution(a)
            ids_b, fd_b, dist_b = self._fd_distribution(b)
            if not np.array_equal(ids_a, ids_b):
                raise EvalFormatError(f"{a.name!r} and {b.name!r} have FD features of different test images")
            estimate = fd_a - fd_b
            lo, hi = half_sample_interval(estimate, dist_a - dist_b, len(ids_a), self.confidence)
            n_images = len(ids_a)
        else:
            va, vb = _paired_square(a, b, metric)
            estimate, lo, hi = paired_bootstrap(va, vb, n=self.n, seed=self.seed, confidence=self.confidence)
            n_images = len(va)
        return {**record, "estimate": estimate, "lo": lo, "hi": hi, "n_images": n_images,
                "verdict": verdict(lo, hi, HIGHER_IS_BETTER[metric])}


def overall_verdict(verdicts: Sequence[str]) -> str:
    """A claim holds when every comparison holds, fails when any fails; a missing model leaves
    it untested, anything else is inconclusive."""
    if DOES_NOT_HOLD in verdicts:
        return DOES_NOT_HOLD
    if NOT_RUN in verdicts:
        return NOT_RUN
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE


def evaluate_claims(results: dict[str, EvalResult | None], n_resamples: int, n_resamples_fd: int, seed: int) -> dict:
    """Claims C1-C3 and the classical-fill check, as the ``claims.json`` document."""
    tester = ClaimTester(results, n_resamples, n_resamples_fd, seed)
    claims = []
    for claim in CLAIMS:
        comparisons = [tester.compare(better, worse, m) for better, worse in claim.comparisons for m in CLAIM_METRICS]
        claims.append({"id": claim.id, "statement": claim.statement, "verdict": overall_verdict([c["verdict"] for c in comparisons]), "comparisons": comparisons})
    classical = [
        tester.compare(display, CLASSICAL, m)
        for display, r in results.items()
        if display != CLASSICAL and r is not None
        for m in CLASSICAL_CHECK_METRICS
    ]
    return {
        "method": "paired over test images (square masks): per-image metrics by a percentile bootstrap of the "
                  "per-image differences; FD differences by " + FD_INTERVAL,
        "difference": "first model minus second model",
        "n_resamples": n_resamples,
        "n_resamples_fd": n_resamples_fd,
        "seed": seed,
        "confidence": tester.confidence,
        "claims": claims,
        "classical_check": {
            "statement": f"every evaluated learned model beats the classical {CLASSICAL} fill",
            "verdict": overall_verdict([c["verdict"] for c in classical]) if classical else NOT_RUN,
            "comparisons": classical,
        },
    }


def _comparison_row(c: dict) -> list[str]:
    name = f"{c['better']} vs {c['worse']}"
    if c["verdict"] == NOT_RUN:
        return [name, c["metric"], NOT_RUN, NOT_RUN, f"{NOT_RUN} ({', '.join(c['missing'])})"]
    digits = 4 if c["metric"] in ("ssim", "lpips", "id_sim") else 3
    return [name, c["metric"] + (" (higher better)" if c["higher_is_better"] else " (lower better)"),
            f"{c['estimate']:+.{digits}f}", f"[{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}]", c["verdict"]]


def claims_markdown(doc: dict) -> str:
    header = ["Comparison", "Metric", "Difference", f"{doc['confidence']:.0%} interval", "Verdict"]
    parts = [
        "# Claims of PAPER.md sec. 7",
        "",
        f"Paired over the test images with square masks (seed {doc['seed']}). Differences are first model minus "
        f"second. PSNR and SSIM: percentile bootstrap of the per-image differences, {doc['n_resamples']} resamples. "
        f"FD: {doc['n_resamples_fd']} random halves of the test images (without replacement), both models' FD "
        "recomputed on each; the interval is the full-set difference minus the quantiles of the halves' deviations "
        "from their mean (FD depends on the number of images, so resamples sit at another level than the full "
        "set; centring removes that shift). The FD difference is the exact (Gram-matrix) one, which can differ "
        "slightly from the tables' pytorch-fid values where the test set has fewer images than features. "
        "A comparison holds when the interval "
        "excludes 0 in the claimed direction, does not hold when it excludes 0 in the other direction, and is "
        "inconclusive otherwise; a claim holds when all its comparisons hold.",
    ]
    for claim in (*doc["claims"], {"id": "Check", **doc["classical_check"]}):
        parts += ["", f"## {claim['id']}: {claim['statement']} — **{claim['verdict']}**", ""]
        parts.append(_markdown_table(header, [_comparison_row(c) for c in claim["comparisons"]]) if claim["comparisons"] else "No model evaluated.")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------- irregular masks


def irregular_frame(results: dict[str, EvalResult | None]) -> pd.DataFrame:
    """Mean metrics per model and hole-area bin on the irregular masks (long format)."""
    records = []
    for display, r in results.items():
        if r is None:
            continue
        rows = r.rows[r.rows["mask_set"] == "irregular"]
        for label in (*AREA_BIN_LABELS, AREA_BIN_OVERFLOW):
            sel = rows[rows["area_bin"] == label]
            if sel.empty:
                continue
            record = {"model": display, "area_bin": label, "n": len(sel), "hole_fraction": float(sel["hole_fraction"].mean())}
            for metric in IRREGULAR_METRICS:
                record[metric] = float(sel[metric].mean())
                record[f"{metric}_sem"] = float(sel[metric].std(ddof=1) / math.sqrt(len(sel))) if len(sel) > 1 else math.nan
            records.append(record)
    columns = ["model", "area_bin", "n", "hole_fraction", *(c for m in IRREGULAR_METRICS for c in (m, f"{m}_sem"))]
    return pd.DataFrame(records, columns=columns)


def irregular_markdown(frame: pd.DataFrame, results: dict[str, EvalResult | None]) -> str:
    parts = [
        "# Irregular masks per hole-area bin",
        "",
        "NVIDIA irregular masks resized to the evaluation resolution; a mask's bin is the bin of its hole "
        "fraction at that resolution. Cells are means over the images of a bin; the last table counts them.",
    ]
    bins = [b for b in (*AREA_BIN_LABELS, AREA_BIN_OVERFLOW) if b in set(frame["area_bin"])]
    digits = {"psnr": 3, "ssim": 4, "lpips": 4}
    for metric in (*IRREGULAR_METRICS, "n"):
        rows = []
        for display, r in results.items():
            if r is None:
                rows.append([display, *([NOT_RUN] * len(bins))])
                continue
            sel = frame[frame["model"] == display].set_index("area_bin")
            rows.append([display, *(("—" if b not in sel.index else str(int(sel.at[b, metric])) if metric == "n" else _fmt(float(sel.at[b, metric]), digits[metric])) for b in bins)])
        title = "Images per bin" if metric == "n" else metric.upper()
        parts += ["", f"## {title}", "", _markdown_table(["Model", *bins], rows) if bins else "No irregular-mask rows."]
    return "\n".join(parts) + "\n"


def plot_irregular(path: Path, frame: pd.DataFrame) -> None:
    """Mean PSNR against mean hole area per bin, one line per model, 95% normal error bars."""
    fig = Figure(figsize=(6.0, 4.0), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for display, sel in frame.groupby("model", sort=False):
        ax.errorbar(sel["hole_fraction"] * 100, sel["psnr"], yerr=1.96 * sel["psnr_sem"].fillna(0.0), marker="o", capsize=3, label=display)
    ax.set_xlabel("hole area (% of the image)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Irregular masks: PSNR against hole area")
    ax.grid(alpha=0.3)
    if not frame.empty:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)


# ------------------------------------------------------------------------------ loss curves

LOSS_CURVE_SKIP = ("step", "epoch", "images_seen")


def plot_loss_curves(plots_dir: str | Path, path: Path) -> list[str]:
    """One panel per ``train_<model>.csv`` of ``plots_dir``: every logged loss term against
    the training step (log scale when every term stays positive; learning rates left out), so the
    curves can be read offline without ``dvc plots``' web page. Returns the models drawn."""
    files = sorted(Path(plots_dir).glob("train_*.csv"))
    frames = [(f.stem[len("train_"):], pd.read_csv(f)) for f in files]
    frames = [(m, df) for m, df in frames if "step" in df.columns and len(df)]
    n = max(1, len(frames))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    if not frames:
        fig.text(0.5, 0.5, "no training curves yet", ha="center", va="center")
    for i, (model, df) in enumerate(frames):
        ax = fig.add_subplot(rows, cols, i + 1)
        terms = [c for c in df.columns if c not in LOSS_CURVE_SKIP and not c.startswith("lr/")]
        for term in terms:
            ax.plot(df["step"], df[term], label=term, linewidth=1.2)
        if terms and (df[terms] > 0).all().all():
            ax.set_yscale("log")
        seen = int(df["images_seen"].iloc[-1]) if "images_seen" in df.columns else None
        ax.set_title(model + (f" ({_fmt_count(seen)} images)" if seen is not None else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    return [m for m, _ in frames]


FACE_FD = metric_key("fd", FACE_FD_BACKBONE)
CURVE_PANELS = ("psnr", "ssim", "lpips", "hole_l1", "fd", FACE_FD)


def _curve_column(df: pd.DataFrame, panel: str) -> str | None:
    """The CSV column of a panel: ``lpips`` / ``fd`` match their backbone-named key."""
    if panel in df.columns:
        return panel
    prefix = {"lpips": "lpips_", "fd": "fd_"}.get(panel)
    matches = [c for c in df.columns if prefix and c.startswith(prefix) and c != FACE_FD]
    return matches[0] if matches else None


def classical_on_curve_subset(result: EvalResult | None, n: int) -> dict[str, float]:
    """``inpaint_biharmonic``'s metrics on the learning curves' images: the first ``n`` test
    images with their squares (from its per-image rows and FD features)."""
    if result is None:
        return {}
    rows = result.rows[result.rows["mask_set"] == "square"].head(n)  # evaluation order: test image 0, 1, ...
    out = {m: float(rows[m].mean()) for m in ("psnr", "ssim", "lpips", "hole_l1") if m in rows}
    ids, real, fake = result.sorted_features()
    keep = np.isin(ids, rows["image_id"].to_numpy())
    if keep.sum() >= 2:
        out["fd"] = frechet_distance(real[keep], fake[keep])
    return out


def plot_learning_curves(plots_dir: str | Path, path: Path, classical: EvalResult | None, n_images: int) -> list[str]:
    """One panel per metric: every inpainter's learning curve (``curve_<model>.csv``: metric on
    the first ``n_images`` test images against images shown, log x), ``inpaint_biharmonic`` on
    the same images as a horizontal line. Returns the models drawn."""
    frames = [(f.stem[len("curve_"):], pd.read_csv(f)) for f in sorted(Path(plots_dir).glob("curve_*.csv"))]
    frames = [(m, df) for m, df in frames if m != "stylegan" and len(df)]
    line = classical_on_curve_subset(classical, n_images)
    fig = Figure(figsize=(12.6, 6.4), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    for i, panel in enumerate(CURVE_PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        label = panel
        for model, df in frames:
            col = _curve_column(df, panel)
            if col is not None:
                ax.plot(df["images_seen"], df[col], marker="o", markersize=3, linewidth=1.2, label=model)
                label = col
        if panel in line:
            ax.axhline(line[panel], color="black", linestyle="--", linewidth=1, label=CLASSICAL)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
        ax.set_title(f"{label} (first {n_images} test images, squares)", fontsize=8)
        ax.set_xlabel("images shown")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    if not frames:
        fig.text(0.5, 0.5, "no learning-curve points yet", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    return [m for m, _ in frames]


def plot_prior_curve(plots_dir: str | Path, path: Path) -> bool:
    """The prior's two Frechet distances against images shown (``curve_stylegan.csv``)."""
    csv_path = Path(plots_dir) / "curve_stylegan.csv"
    df = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    fig = Figure(figsize=(6.4, 3.6), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len(df):
        fid_col = _curve_column(df, "fd")
        ax.plot(df["images_seen"], df[fid_col], marker="o", color="tab:blue", label=fid_col)
        ax.set_ylabel(fid_col, color="tab:blue", fontsize=8)
        twin = ax.twinx()
        twin.plot(df["images_seen"], df[FACE_FD], marker="s", color="tab:red", label=FACE_FD)
        twin.set_ylabel(FACE_FD, color="tab:red", fontsize=8)
        n = int(df["fd_samples"].iloc[-1]) if "fd_samples" in df else None
        ax.set_title(f"StyleGAN2 prior: FD of {n} samples to {n} test faces", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no prior curve yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("images shown")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    return bool(len(df))


# ------------------------------------------------------------------------------- the page

PAGE_FIGURES = (
    ("Figure 3: Ours against the baselines", "figure3.png"),
    ("Figure 5: the ablation variants", "figure5.png"),
    ("Stage 1 alone against inpaint_biharmonic", "figure_stage1.png"),
    ("Learning curves (metrics on the curve images against images shown)", "learning_curves.png"),
    ("The StyleGAN2 prior's Frechet distances against images shown", "prior_curve.png"),
    ("Training losses", "loss_curves.png"),
    ("PSNR against hole area (irregular masks)", "irregular_psnr_vs_area.png"),
)


def _demote(markdown: str) -> str:
    """Every heading one level down, so an included file sits under the page's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def budget_rows(results: dict[str, EvalResult | None]) -> list[list[str]]:
    """``[model, training run, images seen, training time]`` for every training run behind an
    evaluated model, from the evaluation summaries' ``training`` facts."""
    rows, seen = [], set()
    for display, r in results.items():
        if r is None:
            continue
        for run, facts in r.summary.get("training", {}).items():
            if run in seen:
                continue
            seen.add(run)
            rows.append([MODELS[run].display if run in MODELS else run, run, f"{int(facts['images_seen']):,}",
                         f"{float(facts['train_time_s']) / 60:.1f} min"])
    return rows


def report_page(out_dir: Path, results: dict[str, EvalResult | None], profile: dict[str, object]) -> str:
    """``reports/README.md``: what was run and every result file of the report, in one page. Its
    tables are the report's own files, included verbatim; the budgets come from the evaluations."""
    evaluated = [r for r in results.values() if r is not None]
    resolution = evaluated[0].summary.get("resolution") if evaluated else None
    parts = [
        "# Reproduction report",
        "",
        "Written by the `report` stage (`faceinpaint report`) from the evaluation folders; do not edit by hand.",
        "",
        f"Profile **{profile.get('profile', '?')}**, {resolution}x{resolution} images, "
        f"{evaluated[0].summary.get('n_images', '?') if evaluated else 0} test images with the ten square masks. "
        f"Models evaluated: {', '.join(r.display for r in evaluated) or 'none'}; not run: "
        f"{', '.join(d for d, r in results.items() if r is None) or 'none'}.",
        "",
        "## Training budgets",
        "",
        "| model | training run | images seen | training time |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in budget_rows(results)),
    ]
    for name in ("table1.md", "table2.md", "table_stage1.md", "claims.md", "irregular_bins.md"):
        path = out_dir / name
        if path.is_file():
            parts += ["", _demote(path.read_text().strip())]
    parts += ["", "## Figures", ""]
    for caption, name in PAGE_FIGURES:
        if (out_dir / name).is_file():
            parts += [f"**{caption}** (`{name}`)", "", f"![{caption}]({name})", ""]
    parts += [
        "## How to reproduce",
        "",
        "```bash",
        "bash scripts/setup.sh && . .venv/bin/activate && dvc repro   # every file above",
        "dvc repro evaluate@pconv report                                # one model's numbers, then this page",
        "```",
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ report


def metrics_document(results: dict[str, EvalResult | None]) -> dict[str, float]:
    """Flat ``{"<model>.<metric>": value}`` of the square-mask metrics, for ``dvc metrics diff``.
    FD and LPIPS keys carry their backbone, so numbers from different backbones never compare."""
    flat: dict[str, float] = {}
    for r in results.values():
        if r is None:
            continue
        for metric in ("psnr", "ssim", "id_sim"):
            flat[f"{r.name}.{metric}"] = r.value(metric)
        for metric in ("fd", "lpips"):
            flat[f"{r.name}.{metric_key(metric, r.summary['backbones'][metric])}"] = r.value(metric)
        for key in ("hole_l1", FACE_FD):
            if key in r.summary:
                flat[f"{r.name}.{key}"] = float(r.summary[key])
    return flat


def build_report(
    eval_root: str | Path,
    out_dir: str | Path,
    models: Mapping[str, str] = DEFAULT_MODELS,
    *,
    n_bootstrap: int = 2000,
    n_bootstrap_fd: int = 1000,
    seed: int = 0,
    plots_dir: str | Path | None = None,
    curve_images: int = 200,
    profile: str = "?",
) -> dict[str, Path]:
    """The ``report`` stage. ``models`` maps display names (those of :data:`TABLES`, the
    classical :data:`CLASSICAL`, or others, which appear in the irregular table and metrics)
    to folder names under ``eval_root``. ``n_bootstrap`` resamples test PSNR / SSIM claims,
    ``n_bootstrap_fd`` the FD claims (see :class:`ClaimTester` for why they differ). With
    ``plots_dir`` (the training stages' ``train_<model>.csv``) it also draws ``loss_curves.png``.
    Returns the written files by name."""
    eval_root, out_dir = Path(eval_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {display: load_eval_dir(eval_root / name, display) for display, name in models.items()}
    for display in {n for names in TABLES.values() for n in names} | {CLASSICAL}:
        results.setdefault(display, None)
    written: dict[str, Path] = {}

    for table, names in TABLES.items():
        frame = table_frame(names, results, models)
        present = [results[n] for n in (*names, CLASSICAL) if results[n] is not None]
        title = TABLE_TITLES[table]
        frame.to_csv(out_dir / f"{table}.csv", index=False)
        (out_dir / f"{table}.md").write_text(table_markdown(title, frame, present))
        written[f"{table}.csv"], written[f"{table}.md"] = out_dir / f"{table}.csv", out_dir / f"{table}.md"

    evaluated = [r for r in results.values() if r is not None]
    for figure, names in FIGURES.items():
        present = [results[n] for n in names if results[n] is not None]
        reference = (present or evaluated or [None])[0]
        if reference is None:
            continue
        write_figure(out_dir / f"{figure}.png", names, results, reference)
        written[f"{figure}.png"] = out_dir / f"{figure}.png"

    claims = evaluate_claims(results, n_bootstrap, n_bootstrap_fd, seed)
    (out_dir / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    (out_dir / "claims.md").write_text(claims_markdown(claims))
    written["claims.json"], written["claims.md"] = out_dir / "claims.json", out_dir / "claims.md"

    irregular = irregular_frame(results)
    irregular.to_csv(out_dir / "irregular_bins.csv", index=False)
    (out_dir / "irregular_bins.md").write_text(irregular_markdown(irregular, results))
    plot_irregular(out_dir / "irregular_psnr_vs_area.png", irregular)
    for name in ("irregular_bins.csv", "irregular_bins.md", "irregular_psnr_vs_area.png"):
        written[name] = out_dir / name

    if plots_dir is not None:
        plot_loss_curves(plots_dir, out_dir / "loss_curves.png")
        plot_learning_curves(plots_dir, out_dir / "learning_curves.png", results.get(CLASSICAL), curve_images)
        plot_prior_curve(plots_dir, out_dir / "prior_curve.png")
        for name in ("loss_curves.png", "learning_curves.png", "prior_curve.png"):
            written[name] = out_dir / name

    (out_dir / "metrics.json").write_text(json.dumps(metrics_document(results), indent=2, sort_keys=True) + "\n")
    written["metrics.json"] = out_dir / "metrics.json"
    (out_dir / "README.md").write_text(report_page(out_dir, results, {"profile": profile}))
    written["README.md"] = out_dir / "README.md"
    return written
