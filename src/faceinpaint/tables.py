"""The report's tables (PAPER.md sec. 6, Tables 1 and 2; sec. 6a): our numbers beside the
paper's with a caption that says what each number is measured with, the irregular masks per
hole-area bin, the training budgets, the texture generator's level sizes, and the small
formatting helpers every markdown file of the report shares.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import pandas as pd

from .evalformat import CLASSICAL, FACE_FD, NOT_RUN, STAGE1, EvalResult
from .metrics import AREA_BIN_LABELS, AREA_BIN_OVERFLOW, FACE_FD_BACKBONE
from .models import MODELS, TEXTURE_MODELS
from .texture import TextureGenerator

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
IRREGULAR_METRICS = ("psnr", "ssim", "lpips")


# ------------------------------------------------------------------------------ formatting


def fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def training_text(training: dict) -> str:
    """``stylegan 48.0k img / 1.20 h; texture ...`` or ``no training``."""
    if not training:
        return "no training"
    return "; ".join(f"{stage} {fmt_count(int(f['images_seen']))} img / {fmt_duration(float(f['train_time_s']))}" for stage, f in training.items())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
        f"FD (face): the same Frechet distance on the 128-d embeddings of the face-recognition network "
        f"(`{FACE_FD_BACKBONE}`, face crop as for ID sim; key `{FACE_FD}`), a face-specific FD beside "
        f"the ImageNet-backbone one. Ours and Variant 2 train with an ID loss on that network, so for them it "
        f"is not an independent judge.",
        f"LPIPS: `{ref['backbones']['lpips']}`.",
        f"ID sim: cosine of `{ref['backbones']['id']}` embeddings of composite and original. It is the same network "
        f"as the ID loss of the structure reconstructor (PAPER.md sec. 2), so models trained with that loss "
        f"(Ours, Variant 2) are scored by the network they were optimised against.",
        "PSNR (hole): the same PSNR on the hole's pixels only, 10 log10(1 / MSE over the hole's pixels and channels) "
        "(`faceinpaint.metrics.psnr_hole`); L1 (hole): mean absolute error over the hole's pixels and channels on "
        "the [0, 1] scale (`faceinpaint.metrics.mean_abs_error`). Both score the composite, whose known pixels are "
        "the original's.",
        "Training: images shown and wall time of every training stage the model depends on.",
    ]
    lines += fd_provenance_lines(results)
    if any(r.summary.get("external") for r in results):
        lines.append("Rows marked (external): methods outside the code base, scored from their predictions for the "
                     "exported benchmark (`faceinpaint benchmark export`, `faceinpaint evaluate --predictions`; "
                     "params `external_methods`) on the same images, masks and metric code; their known pixels are "
                     "replaced by the originals' before scoring. They are not the paper's.")
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


def fd_provenance_lines(results: Sequence[EvalResult]) -> list[str]:
    """Under the FD columns: what each FD was measured with (``fd_provenance`` of the summaries;
    one line per distinct measurement, the models it covers named when they differ)."""
    groups: dict[str, list[str]] = {}
    for r in results:
        for key, p in r.summary.get("fd_provenance", {}).items():
            weights = f"`{p['weights_sha256'][:16]}...`" if p.get("weights_sha256") else "unknown"
            resize = f"{p['resize']['size']}x{p['resize']['size']} ({p['resize']['filter']})" if p.get("resize") else "unknown"
            text = (f"`{key}`: backbone `{p['backbone']}`, weights sha256 {weights}, {p['n_images']} images, "
                    f"resized to {resize}, input range [{p['input_range'][0]:g}, {p['input_range'][1]:g}]")
            groups.setdefault(text, []).append(r.display)
    n = len(results)
    return [f"FD provenance, {text}" + ("" if len(who) == n else f" (for {', '.join(who)})") for text, who in groups.items()]


def table_frame(names: Sequence[str], results: dict[str, EvalResult | None], eval_names: Mapping[str, str],
                external: Sequence[str] = ()) -> pd.DataFrame:
    """One row per model (``names`` then the classical row, then the ``external`` methods'
    display names, marked ``external``): our numbers beside the paper's."""
    records = []
    for display in dict.fromkeys((*names, CLASSICAL, *external)):
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
            "fd_face": float(r.summary.get(FACE_FD, math.nan)) if r else math.nan,
            "lpips": r.value("lpips") if r else math.nan,
            "lpips_backbone": r.summary["backbones"]["lpips"] if r else "",
            "id_sim": r.value("id_sim") if r else math.nan,
            "n_images": r.summary["n_images"] if r else 0,
            "resolution": r.summary["resolution"] if r else 0,
            "images_seen": sum(int(f["images_seen"]) for f in r.summary["training"].values()) if r else 0,
            "train_time_s": sum(float(f["train_time_s"]) for f in r.summary["training"].values()) if r else 0.0,
            "training": training_text(r.summary["training"]) if r else "",
            "psnr_hole": float(r.summary.get("psnr_hole", math.nan)) if r else math.nan,
            "hole_l1": float(r.summary.get("hole_l1", math.nan)) if r else math.nan,
            "external": display in external,
        }
        records.append(record)
    return pd.DataFrame(records)


def table_markdown(title: str, frame: pd.DataFrame, results: Sequence[EvalResult]) -> str:
    header = ["Model", "PSNR", "PSNR (paper)", "SSIM", "SSIM (paper)", "FD", "FID (paper)", "FD (face)", "LPIPS", "ID sim",
              "PSNR (hole)", "L1 (hole)", "Training"]
    rows = []
    for rec in frame.to_dict("records"):
        name = f"{rec['model']} (external)" if rec.get("external") else rec["model"]
        if rec["status"] == NOT_RUN:
            rows.append([name, NOT_RUN, fmt(rec["psnr_paper"], 3), NOT_RUN, fmt(rec["ssim_paper"], 3), NOT_RUN,
                         fmt(rec["fid_paper"], 3), NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, NOT_RUN, "—"])
            continue
        rows.append([
            name, fmt(rec["psnr"], 3), fmt(rec["psnr_paper"], 3), fmt(rec["ssim"], 4), fmt(rec["ssim_paper"], 3),
            fmt(rec["fd"], 3), fmt(rec["fid_paper"], 3), fmt(rec["fd_face"], 5), fmt(rec["lpips"], 4), fmt(rec["id_sim"], 4),
            fmt(rec.get("psnr_hole"), 3), fmt(rec.get("hole_l1"), 4),
            "external method" if rec.get("external") else rec["training"],
        ])
    caption = "\n".join(f"- {line}" for line in _caption(results))
    return f"# {title}\n\n{caption}\n\n{markdown_table(header, rows)}\n"


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
            rows.append([display, *(("—" if b not in sel.index else str(int(sel.at[b, metric])) if metric == "n" else fmt(float(sel.at[b, metric]), digits[metric])) for b in bins)])
        title = "Images per bin" if metric == "n" else metric.upper()
        parts += ["", f"## {title}", "", markdown_table(["Model", *bins], rows) if bins else "No irregular-mask rows."]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- the report page


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


def _attention_role(level: int, score_level: Mapping[int, int], attention_levels: Sequence[int]) -> str:
    """What the ACM / ATN does at an encoder level, for one attention setting."""
    if level in score_level:
        return f"filled with s^{score_level[level]}"
    if level in attention_levels:
        targets = [t for t, s in score_level.items() if s == level]
        return f"ACM: s^{level}, fills level{'s' if len(targets) > 1 else ''} {', '.join(map(str, targets))}"
    return "—"


def texture_levels(resolution: int, base_width: int, max_width: int) -> list[dict]:
    """The texture generator's six encoder levels at ``resolution`` with the profile's widths
    (PAPER.md sec. 6a: state the level sizes), read off the generators the texture models build
    (:class:`faceinpaint.texture.TextureGenerator`, one per attention setting of the registry).
    One record per level: ``level``, ``stride`` and ``channels`` of its gated convolution, ``size``
    (side of its map), ``cell_px`` (image pixels one cell covers, per side) and ``roles``
    (models' display names -> what the attention does at the level)."""
    settings: dict[tuple[int, ...], list[str]] = {}
    for m in TEXTURE_MODELS:
        settings.setdefault(tuple(MODELS[m].extras["attention_levels"]), []).append(MODELS[m].display)
    generators = {" / ".join(names): TextureGenerator(resolution, base_width, max_width, levels)
                  for levels, names in settings.items()}
    geometry = next(iter(generators.values()))
    records = []
    for level, (conv, size) in enumerate(zip(geometry.encoder, geometry.sizes), start=1):
        records.append({
            "level": level,
            "stride": conv.conv.stride[0],
            "size": size,
            "channels": conv.out_channels,
            "cell_px": resolution // size,
            "roles": {names: _attention_role(level, g.attention.score_level, g.attention.attention_levels)
                      for names, g in generators.items()},
        })
    return records


def texture_levels_markdown(resolution: int, base_width: int, max_width: int) -> str:
    """:func:`texture_levels` as a markdown section."""
    records = texture_levels(resolution, base_width, max_width)
    header = ["Level", "Stride", "Map", "Channels", "One cell covers", *(f"Attention: {n}" for n in records[0]["roles"])]
    rows = [[str(r["level"]), str(r["stride"]), f"{r['size']}x{r['size']}", str(r["channels"]),
             f"{r['cell_px']}x{r['cell_px']} px", *r["roles"].values()] for r in records]
    return "\n".join([
        "# Texture generator levels",
        "",
        f"The six gated encoder levels of the texture generator at {resolution}x{resolution}, with the profile's "
        f"`texture.base_width` = {base_width} and `texture.max_width` = {max_width}, as "
        "`faceinpaint.texture.TextureGenerator` builds them (PAPER.md sec. 6a). \"ACM: s^l\": the attention "
        "scores are computed on that level; \"filled with s^l\": the ATN fills that level's hole cells with "
        "those scores.",
        "",
        markdown_table(header, rows),
    ]) + "\n"
