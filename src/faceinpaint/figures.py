"""The report's figures: PAPER.md sec. 6, Figures 3 and 5 (and the stage-1 figure) as grids of
the evaluated pixels, PSNR against hole area on the irregular masks, and the training curves
(losses, learning curves against images shown, the prior's Frechet distances), all drawn with
matplotlib's Agg canvas so the report needs no display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from .evalformat import (CLASSICAL, FACE_FD, FROM_EVALUATION, NOT_RUN, STAGE1, EvalFormatError, EvalResult, curve_column,
                         on_curve_subset, with_final_point)
from .tables import fmt_count

FIGURES: dict[str, tuple[str, ...]] = {
    "figure3": ("PConv", "RFR", "Ours"),
    "figure5": ("Variant 1", "Variant 2", "Ours"),
    "figure_stage1": (STAGE1, CLASSICAL),
}

# Figure grid geometry in pixels: panels are integer upscales of the images (nearest
# neighbour, so no pixel is invented) at least FIGURE_PANEL_MIN_PX on a side.
FIGURE_PANEL_MIN_PX = 128
FIGURE_GAP_PX = 4
FIGURE_HEADER_PX = 28
FIGURE_DPI = 100
HOLE_DISPLAY_RGB = (255, 255, 255)


# ------------------------------------------------------------------------------ figure grids


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


# ------------------------------------------------------------------------- irregular masks


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
        ax.set_title(model + (f" ({fmt_count(seen)} images)" if seen is not None else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    return [m for m, _ in frames]


CURVE_PANELS = ("psnr", "ssim", "lpips", "hole_l1", "fd", FACE_FD)


def learning_curves(plots_dir: str | Path, evaluations: Mapping[str, EvalResult | None], n_images: int) -> dict[str, pd.DataFrame]:
    """Every inpainter's learning curve by model name: its ``curve_<model>.csv`` (the prior's
    excepted), with the final point of a run that ended between curve budgets read from its
    evaluation in ``evaluations`` (:func:`faceinpaint.evalformat.with_final_point`)."""
    frames = {f.stem[len("curve_"):]: pd.read_csv(f) for f in sorted(Path(plots_dir).glob("curve_*.csv"))}
    return {m: with_final_point(df, evaluations.get(m), n_images) for m, df in frames.items()
            if m != "stylegan" and len(df)}


def plot_learning_curves(curves: Mapping[str, pd.DataFrame], path: Path, classical: EvalResult | None, n_images: int) -> list[str]:
    """One panel per metric: every inpainter's learning curve (:func:`learning_curves`: the
    metric on the first ``n_images`` test images against images shown, log x; a final point read
    from the evaluation drawn hollow), ``inpaint_biharmonic`` on the same images as a horizontal
    line. Returns the models drawn."""
    frames = [(m, df) for m, df in curves.items() if len(df)]
    line = on_curve_subset(classical, n_images)
    fig = Figure(figsize=(12.6, 6.4), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    for i, panel in enumerate(CURVE_PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        label = panel
        for model, df in frames:
            col = curve_column(df, panel)
            if col is not None:
                shown = df[df[col].notna()]
                lines = ax.plot(shown["images_seen"], shown[col], marker="o", markersize=3, linewidth=1.2, label=model)
                final = shown[shown["source"] == FROM_EVALUATION]
                if len(final):
                    ax.plot(final["images_seen"], final[col], linestyle="none", marker="o", markersize=6,
                            mfc="white", color=lines[0].get_color())
                label = col
        if panel in line:
            ax.axhline(line[panel], color="black", linestyle="--", linewidth=1, label=CLASSICAL)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
        if panel == "fd" and frames:
            ax.set_yscale("log")  # early points sit an order of magnitude above the final ones
            for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_formatter(FormatStrFormatter("%g"))  # 3, 4, 6, 10, 20 rather than 3x10^0
        ax.set_title(f"{label} (first {n_images} test images, squares)", fontsize=8)
        ax.set_xlabel("images shown")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    if not frames:
        fig.text(0.5, 0.5, "no learning-curve points yet", ha="center", va="center")
    else:
        fig.text(0.5, 0.005, "filled: points the training run took; hollow: a run's final budget between two curve budgets, "
                 "from its evaluation (same images, masks and metric code; no face-embedding FD)", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=FIGURE_DPI)
    return [m for m, _ in frames]


def prior_checks(plots_dir: str | Path) -> pd.DataFrame:
    """The full quality checks of the latest prior run at the end of each of its sittings
    (``prior_checks.csv``, written by the stylegan stage, newest run's rows first)."""
    path = Path(plots_dir) / "prior_checks.csv"
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    return df[df["run"] == df["run"].iloc[0]].sort_values("images_seen") if len(df) else df


def plot_prior_curve(plots_dir: str | Path, path: Path) -> bool:
    """The prior's two Frechet distances against images shown: the run's log-spaced curve points
    (``curve_stylegan.csv``, filled markers) and the full check at the end of each sitting
    (``prior_checks.csv``, hollow markers, more samples)."""
    csv_path = Path(plots_dir) / "curve_stylegan.csv"
    df = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    checks = prior_checks(plots_dir)
    fig = Figure(figsize=(6.4, 3.6), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len(df):
        fid_col = curve_column(df, "fd")
        twin = ax.twinx()
        n = int(df["fd_samples"].iloc[-1]) if "fd_samples" in df else None
        ax.plot(df["images_seen"], df[fid_col], marker="o", color="tab:blue", label=f"{fid_col} ({n} samples)")
        twin.plot(df["images_seen"], df[FACE_FD], marker="s", color="tab:red", label=f"{FACE_FD} ({n} samples)")
        title = f"StyleGAN2 prior: FD of {n} samples to {n} test faces"
        if len(checks) and fid_col in checks:
            m = int(checks["fd_samples"].iloc[-1])
            ax.plot(checks["images_seen"], checks[fid_col], ls="--", marker="o", mfc="white", color="tab:blue",
                    label=f"{fid_col}, end of a sitting ({m} samples)")
            twin.plot(checks["images_seen"], checks[FACE_FD], ls="--", marker="s", mfc="white", color="tab:red",
                      label=f"{FACE_FD}, end of a sitting ({m} samples)")
            title = (f"StyleGAN2 prior: FD to the test faces ({n} samples at log-spaced budgets, "
                     f"{m} at the end of each sitting, hollow)")
        ax.set_ylabel(fid_col, color="tab:blue", fontsize=8)
        twin.set_ylabel(FACE_FD, color="tab:red", fontsize=8)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="upper right")
        ax.set_title(title, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no prior curve yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("images shown")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    return bool(len(df))
