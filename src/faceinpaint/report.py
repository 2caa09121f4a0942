"""The ``report`` stage: Tables 1-2, Figures 3 and 5, the claims C1-C3, irregular masks per area bin.

PAPER.md sec. 6 gives the tables and figures to reproduce, sec. 6a the gaps this suite closes
(the ten squares, the SSIM settings, the level sizes), sec. 7 the claims. :func:`build_report`
reads every model's evaluation folder (:mod:`faceinpaint.evalformat`) and writes ``reports/``
from the modules that make each part: :mod:`faceinpaint.tables` (tables, captions, the texture
generator's levels), :mod:`faceinpaint.claims` (bootstrap comparisons and verdicts),
:mod:`faceinpaint.figures` (figure grids and curves) and :mod:`faceinpaint.deviations`.

Report outputs (``reports/``)
-----------------------------
``table1.{md,csv}``, ``table2.{md,csv}``; ``figure3.png``, ``figure5.png``;
``claims.{md,json}``; ``irregular_bins.{md,csv}``, ``irregular_psnr_vs_area.png``;
``table_stage1.{md,csv}``, ``figure_stage1.png``; with the training curves ``loss_curves.png``,
``learning_curves.png``, ``prior_curve.png`` and ``claims_by_budget.{md,csv}`` (the claims at each
learning-curve budget, :func:`faceinpaint.claims.verdicts_by_budget`);
``metrics.json`` (flat, every model in one file; CI's regression check reads it: ``<model>.psnr``, ``<model>.ssim``,
``<model>.id_sim``, ``<model>.fd_<backbone>``, ``<model>.lpips_<backbone>`` per evaluated model, and
``<model>.hole_l1``, ``<model>.fd_faceapi-resnet29`` where its summary has them).
``README.md`` (:func:`report_page`): the claims' verdicts first, one line each, then every table
above verbatim, the figures, the training budgets, the texture generator's levels, the
deviations from the paper, and how each metric is measured (each definition once), in one page.
A model whose folder is missing appears as "not run", so the report works on partial pipelines.
External methods (params ``external_methods``, scored by ``faceinpaint evaluate --predictions``)
get a row below the paper's in Tables 1-2, marked external, and paired intervals against every
paper model in ``claims.{md,json}`` (``external``); the claims C1-C3 are unchanged by them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import pandas as pd

from .claims import claims_markdown, evaluate_claims, last_segments, verdicts_by_budget, verdicts_by_budget_markdown
from .deviations import deviations_markdown
from .evalformat import CLASSICAL, DEFAULT_MODELS, FACE_FD, EvalResult, load_eval_dir, on_curve_subset
from .figures import FIGURES, learning_curves, plot_irregular, plot_learning_curves, plot_loss_curves, plot_prior_curve, write_figure
from .metrics import metric_key
from .tables import (
    TABLE_TITLES,
    TABLES,
    budget_rows,
    irregular_frame,
    irregular_markdown,
    table_frame,
    table_markdown,
    texture_levels_markdown,
)

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


def training_masks_markdown(irregular_prob: float, square_min_frac: float, square_max_frac: float) -> str:
    """The training-mask mix, stated as this suite's choice with its ratio (``masks.*`` params)."""
    return (f"**Training masks** (our choice: the paper evaluates on square masks and does not state its training "
            f"masks): every training image gets a fresh mask, a random square of side {square_min_frac:g}-"
            f"{square_max_frac:g} of the image anywhere with probability {1 - irregular_prob:.0%}, or an NVIDIA "
            f"irregular mask of the masks' training half (randomly flipped) with probability {irregular_prob:.0%} "
            f"(`masks.train_irregular_prob` = {irregular_prob:g}). Evaluation uses the ten fixed squares, and the "
            "irregular masks' test half for the area bins.")


def verdict_lines(claims: dict) -> list[str]:
    """One line per claim of ``claims.json`` (C1-C3, then the classical check): its statement,
    verdict and every comparison's difference with its interval."""
    from .claims import _comparison_row

    lines = []
    for claim in (*claims["claims"], {"id": "Check", **claims["classical_check"]}):
        by_pair: dict[str, list[str]] = {}
        for c in claim["comparisons"]:
            name, metric, diff, interval, verdict = _comparison_row(c)
            by_pair.setdefault(name, []).append(f"{metric.split(' ')[0]} {diff} {interval}" if diff != verdict else f"{metric} {verdict}")
        detail = "; ".join(f"{pair}: {', '.join(parts)}" for pair, parts in by_pair.items()) or "no model evaluated"
        lines.append(f"- **{claim['id']}** {claim['statement']}: **{claim['verdict']}** ({detail}).")
    return lines


def _split_definitions(markdown: str) -> tuple[str, list[str]]:
    """A table file without the bullet lines of its caption (what each column measures), and
    those lines: the page gives each definition once, at its end."""
    lines = markdown.splitlines()
    first_row = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    moved = [line for line in lines[:first_row] if line.startswith("- ")]
    kept = [line for i, line in enumerate(lines) if not (i < first_row and line.startswith("- "))]
    return "\n".join(kept), moved


def _split_method(markdown: str) -> tuple[str, list[str]]:
    """``claims.md`` without its method paragraph (the text between its title and first claim), and that paragraph."""
    lines = markdown.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    method = [line for line in lines[1:first] if line.strip()]
    return "\n".join(lines[:1] + [""] + lines[first:]), method


def report_page(out_dir: Path, results: dict[str, EvalResult | None], profile: dict[str, object],
                texture_levels: str | None = None, training_masks: str | None = None,
                claims: dict | None = None) -> str:
    """``reports/README.md``: what was run and every result file of the report, in one page that
    leads with the answer: the claims' verdicts (one line each, with their intervals, from
    ``claims`` or ``claims.json``), then the tables (the report's own files, included verbatim
    except for their column definitions), the claims in full, the figures, the training budgets
    (from the evaluations; ``training_masks`` and ``texture_levels``,
    :func:`faceinpaint.tables.texture_levels_markdown`, after them when given), the deviations
    from the paper (:data:`faceinpaint.deviations.DEVIATIONS`) and, at the end, how each metric is
    measured: every definition once."""
    evaluated = [r for r in results.values() if r is not None]
    resolution = evaluated[0].summary.get("resolution") if evaluated else None
    if claims is None and (out_dir / "claims.json").is_file():
        claims = json.loads((out_dir / "claims.json").read_text())
    parts = [
        "# Reproduction report",
        "",
        "Written by the `report` stage (`faceinpaint report`) from the evaluation folders; do not edit by hand.",
        "",
        f"Profile **{profile.get('profile', '?')}**, {resolution}x{resolution} images, "
        f"{evaluated[0].summary.get('n_images', '?') if evaluated else 0} test images with the ten square masks. "
        f"Models evaluated: {', '.join(r.display for r in evaluated) or 'none'}; not run: "
        f"{', '.join(d for d, r in results.items() if r is None) or 'none'}.",
    ]
    if claims is not None:
        parts += ["", "## What was found", "",
                  f"The claims of PAPER.md sec. 7, each a set of paired comparisons on the test images (difference, "
                  f"{claims['confidence']:.0%} interval); the tables and the claims in full follow, how each number "
                  "is measured is at the end.", "", *verdict_lines(claims)]
    definitions: list[str] = []
    for name in ("table1.md", "table2.md", "table_stage1.md", "claims.md", "claims_by_budget.md", "irregular_bins.md"):
        path = out_dir / name
        if path.is_file():
            text = path.read_text().strip()
            text, moved = _split_method(text) if name == "claims.md" else _split_definitions(text)
            definitions += [line for line in moved if line not in definitions]
            parts += ["", _demote(text)]
    parts += ["", "## Figures", ""]
    for caption, name in PAGE_FIGURES:
        if (out_dir / name).is_file():
            parts += [f"**{caption}** (`{name}`)", "", f"![{caption}]({name})", ""]
    parts += [
        "## Training budgets",
        "",
        "| model | training run | images seen | training time |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in budget_rows(results)),
    ]
    if training_masks is not None:
        parts += ["", training_masks]
    if texture_levels is not None:
        parts += ["", _demote(texture_levels.strip())]
    parts += ["", _demote(deviations_markdown().strip()), ""]
    if definitions:
        bullets = [line for line in definitions if line.startswith("- ")]
        prose = [line for line in definitions if not line.startswith("- ")]
        parts += ["## How it is measured", "", *bullets, ""]
        parts += [f"**The claims' intervals.** {line}" for line in prose] + ([""] if prose else [])
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
        for key in ("hole_l1", FACE_FD, "psnr_hole", "l1"):
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
    resolution: int | None = None,
    texture_widths: tuple[int, int] | None = None,
    training_masks: tuple[float, float, float] | None = None,
    external: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """The ``report`` stage. ``models`` maps display names (those of
    :data:`faceinpaint.tables.TABLES`, the classical :data:`faceinpaint.evalformat.CLASSICAL`, or
    others, which appear in the irregular table and metrics) to folder names under ``eval_root``.
    ``n_bootstrap`` resamples test PSNR / SSIM claims, ``n_bootstrap_fd`` the FD claims (see
    :class:`faceinpaint.claims.ClaimTester` for why they differ). With ``plots_dir`` (the training
    stages' ``train_<model>.csv`` and ``curve_<model>.csv``) it also draws ``loss_curves.png``,
    ``learning_curves.png`` and ``prior_curve.png``. With the profile's ``resolution`` and
    ``texture_widths`` (``texture.base_width``, ``texture.max_width``) the page states the texture
    generator's level sizes; with ``training_masks`` (``masks.train_irregular_prob``,
    ``square_min_frac``, ``square_max_frac``) it states the training-mask mix. Returns the written
    files by name."""
    eval_root, out_dir = Path(eval_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # external methods (params external_methods: name -> predictions folder), by their folder name
    outside = [name for name in (external or {}) if name not in models.values()]
    models = {**models, **{name: name for name in outside}}
    results = {display: load_eval_dir(eval_root / name, display) for display, name in models.items()}
    for display in {n for names in TABLES.values() for n in names} | {CLASSICAL}:
        results.setdefault(display, None)
    written: dict[str, Path] = {}

    for table, names in TABLES.items():
        rows_outside = outside if table in ("table1", "table2") else []
        frame = table_frame(names, results, models, rows_outside)
        present = [results[n] for n in (*names, CLASSICAL, *rows_outside) if results[n] is not None]
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

    claims = evaluate_claims(results, n_bootstrap, n_bootstrap_fd, seed, outside)
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
        by_name = learning_curves(plots_dir, {name: results[display] for display, name in models.items()}, curve_images)
        plot_learning_curves(by_name, out_dir / "learning_curves.png", results.get(CLASSICAL), curve_images)
        plot_prior_curve(plots_dir, out_dir / "prior_curve.png")
        curves = {display: by_name[name] for display, name in models.items() if display != CLASSICAL and name in by_name}
        by_budget = verdicts_by_budget(curves, on_curve_subset(results.get(CLASSICAL), curve_images))
        by_budget.to_csv(out_dir / "claims_by_budget.csv", index=False)
        (out_dir / "claims_by_budget.md").write_text(verdicts_by_budget_markdown(by_budget, curve_images, last_segments(curves)))
        for name in ("loss_curves.png", "learning_curves.png", "prior_curve.png", "claims_by_budget.csv", "claims_by_budget.md"):
            written[name] = out_dir / name

    (out_dir / "metrics.json").write_text(json.dumps(metrics_document(results), indent=2, sort_keys=True) + "\n")
    written["metrics.json"] = out_dir / "metrics.json"
    levels = texture_levels_markdown(resolution, *texture_widths) if resolution and texture_widths else None
    masks = training_masks_markdown(*training_masks) if training_masks else None
    (out_dir / "README.md").write_text(report_page(out_dir, results, {"profile": profile}, levels, masks, claims))
    written["README.md"] = out_dir / "README.md"
    return written
