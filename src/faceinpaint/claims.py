"""The claims of PAPER.md sec. 7 (C1-C3) and the classical-fill check, tested by paired
bootstrap comparisons over the test images (:class:`ClaimTester`), written as ``claims.json``
(:func:`evaluate_claims`) and ``claims.md`` (:func:`claims_markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .evalformat import CLASSICAL, NOT_RUN, EvalFormatError, EvalResult, curve_column
from .metrics import (
    DOES_NOT_HOLD,
    FD_INTERVAL,
    HIGHER_IS_BETTER,
    HOLDS,
    INCONCLUSIVE,
    exact_fd,
    fd_half_samples,
    half_sample_interval,
    paired_bootstrap,
    verdict,
)
from .tables import fmt_count, markdown_table


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
            self._fd[r.display] = (ids, exact_fd(real, fake), fd_half_samples(real, fake, self.n_fd, self.seed,
                                                                             progress=f"FD halves, {r.display}"))
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


# The paper's models an external method is compared with (paired, on the same images and masks).
PAPER_MODELS = ("Ours", "Variant 2", "Variant 1", "PConv", "RFR")


def evaluate_claims(results: dict[str, EvalResult | None], n_resamples: int, n_resamples_fd: int, seed: int,
                    external: Sequence[str] = ()) -> dict:
    """Claims C1-C3 and the classical-fill check, as the ``claims.json`` document; with
    ``external`` (display names of external methods in ``results``) also each external method
    against every paper model (``external``: external minus paper model, same metrics and intervals)."""
    tester = ClaimTester(results, n_resamples, n_resamples_fd, seed)
    outside = [
        {"method": name, "comparisons": [tester.compare(name, model, m) for model in PAPER_MODELS for m in CLAIM_METRICS]}
        for name in external
    ]
    claims = []
    for claim in CLAIMS:
        comparisons = [tester.compare(better, worse, m) for better, worse in claim.comparisons for m in CLAIM_METRICS]
        claims.append({"id": claim.id, "statement": claim.statement, "verdict": overall_verdict([c["verdict"] for c in comparisons]), "comparisons": comparisons})
    classical = [
        tester.compare(display, CLASSICAL, m)
        for display, r in results.items()
        if display != CLASSICAL and r is not None and display not in external
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
        **({"external": outside} if outside else {}),
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
        parts.append(markdown_table(header, [_comparison_row(c) for c in claim["comparisons"]]) if claim["comparisons"] else "No model evaluated.")
    for method in doc.get("external", []):
        parts += ["", f"## External: {method['method']} against the paper's models", "",
                  "Not a claim of the paper: an external method (params `external_methods`) scored on the same images "
                  "and masks; \"holds\" means the external method is better.", ""]
        parts.append(markdown_table(header, [_comparison_row(c) for c in method["comparisons"]]))
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------- verdicts against budget

AHEAD, BEHIND, MIXED = "ahead", "behind", "mixed"


def _direction(wins: int, total: int) -> str:
    return AHEAD if wins == total else BEHIND if wins == 0 else MIXED


def _beats(a: float, b: float, metric: str) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def verdicts_by_budget(curves: Mapping[str, pd.DataFrame], classical: Mapping[str, float]) -> pd.DataFrame:
    """Each claim (and the classical check) at every budget of the learning curves where all the
    models it compares have a point: ``curves`` maps display names to their ``curve_<model>.csv``
    (the curve images, against images shown), ``classical`` is ``inpaint_biharmonic`` on the same
    images (:func:`faceinpaint.evalformat.on_curve_subset`). A cell counts the
    comparisons (model pair x metric) won: *ahead* when all are won, *behind* when none, else
    *mixed*. Point estimates of the means, without intervals (the curves keep no per-image rows)."""
    curves = {d: df for d, df in curves.items() if len(df)}
    points = {d: {int(r["images_seen"]): r for _, r in df.iterrows()} for d, df in curves.items()}
    column = {d: {m: curve_column(df, m) for m in CLAIM_METRICS} for d, df in curves.items()}
    budgets = sorted({b for p in points.values() for b in p})
    rows = []
    for budget in budgets:
        row = {"images_seen": budget}
        for claim in CLAIMS:
            pairs = claim.comparisons
            if not all(budget in points.get(n, {}) for pair in pairs for n in pair):
                row[claim.id] = NOT_RUN
                continue
            wins = total = 0
            for better, worse in pairs:
                for metric in CLAIM_METRICS:
                    a, b = (float(points[n][budget][column[n][metric]]) for n in (better, worse))
                    wins += _beats(a, b, metric)
                    total += 1
            row[claim.id] = f"{_direction(wins, total)} {wins}/{total}"
        learned = [d for d in points if budget in points[d]]
        metrics = [m for m in CLASSICAL_CHECK_METRICS if m in classical]
        if learned and metrics:
            wins = sum(_beats(float(points[d][budget][m]), classical[m], m) for d in learned for m in metrics)
            total = len(learned) * len(metrics)
            row["Check"] = f"{_direction(wins, total)} {wins}/{total} ({', '.join(learned)})"
        else:
            row["Check"] = NOT_RUN
        rows.append(row)
    return pd.DataFrame(rows, columns=["images_seen", *(c.id for c in CLAIMS), "Check"])


def verdicts_by_budget_markdown(frame: pd.DataFrame, n_images: int, segments: pd.DataFrame | None = None) -> str:
    header = ["images shown", *(f"{c.id}: {c.statement}" for c in CLAIMS), f"learned models beat {CLASSICAL} (PSNR, SSIM)"]
    parts = [
        "# Claims against training budget",
        "",
        f"At every learning-curve budget where the compared models all have a point (a run that ended between two "
        f"curve budgets adds its final budget, read from its evaluation's rows on the same images): the metric means "
        f"on the first {n_images} test images with their squares (the curve images), as point estimates without "
        f"intervals. A cell counts the comparisons won (model pair x metric: {', '.join(CLAIM_METRICS)}): "
        f"*{AHEAD}* when all are won, *{BEHIND}* when none, *{MIXED}* otherwise. The verdicts with intervals, "
        "on the whole test set at the final budgets, are in the claims above.",
        "",
    ]
    if frame.empty:
        parts.append("No learning-curve points yet.")
    else:
        parts.append(markdown_table(header, [[fmt_count(int(r["images_seen"])), *(str(r[c]) for c in frame.columns[1:])]
                                             for _, r in frame.iterrows()]))
    if segments is not None and len(segments):
        parts += ["", "## Where each curve stands", "",
                  "Each model's last curve segment (its last two points, same images): the change of each metric, "
                  f"and the metrics that still improved over it. Point estimates on {n_images} images, without intervals: "
                  "a change within a few hundredths of a dB or of an FD unit is as likely noise as a trend.", ""]
        keys = segments.attrs.get("columns", {})  # the FD named by its backbone
        head = ["model", "segment (images shown)", *(f"{keys.get(m, m)} change" for m in SEGMENT_METRICS), "still improving on"]
        parts.append(markdown_table(head, [
            [r["model"], f"{fmt_count(int(r['from_images']))} -> {fmt_count(int(r['to_images']))}",
             *(f"{r[m]:+.4f}" if m == "ssim" else f"{r[m]:+.3f}" for m in SEGMENT_METRICS), r["improving"] or "none"]
            for _, r in segments.iterrows()]))
    return "\n".join(parts) + "\n"


SEGMENT_METRICS = ("psnr", "ssim", "fd")


def last_segments(curves: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each model's change over its last learning-curve segment, the last two points of
    ``curves`` (display name -> curve frame, a final point read from the evaluation included):
    the change of PSNR, SSIM and FD, and ``improving``, the metrics that moved the better way
    (comma-separated). Models with fewer than two points are left out. ``attrs["columns"]`` maps
    each metric to the curves' column (``fd`` to its backbone-named key)."""
    rows, keys = [], {}
    for display, df in curves.items():
        if len(df) < 2:
            continue
        df = df.sort_values("images_seen")
        a, b = df.iloc[-2], df.iloc[-1]
        row = {"model": display, "from_images": int(a["images_seen"]), "to_images": int(b["images_seen"])}
        for metric in SEGMENT_METRICS:
            col = curve_column(df, metric)
            row[metric] = float(b[col]) - float(a[col]) if col is not None else float("nan")
            if col is not None:
                keys.setdefault(metric, col)
        row["improving"] = ", ".join(m for m in SEGMENT_METRICS if pd.notna(row[m]) and _beats(row[m], 0.0, m))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["model", "from_images", "to_images", *SEGMENT_METRICS, "improving"])
    frame.attrs["columns"] = keys
    return frame
