"""CI metric regression check: compare a run's ``reports/metrics.json`` with a baseline.

``dvc metrics diff`` always exits 0, so CI uses this instead. A metric regresses when it
moves past its tolerance in the bad direction (lower PSNR/SSIM/ID similarity, higher FD/LPIPS).
Tolerances live in the baseline file next to the values, with the measured run-to-run spread
they were derived from, so a reviewer sees why each is what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "id_sim": True, "fd": False, "lpips": False}


def metric_kind(name: str) -> str | None:
    """``'psnr'`` for ``full.psnr``, ``'fd'`` for ``full.fd_efficientnet_lite0``, ... or None."""
    leaf = name.rsplit(".", 1)[-1]
    for kind in HIGHER_IS_BETTER:
        if leaf == kind or leaf.startswith(kind + "_"):
            return kind
    return None


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


@dataclass
class Row:
    metric: str
    baseline: float
    current: float | None
    tolerance: float
    status: str  # ok | better | REGRESSED | MISSING

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current - self.baseline


def compare(current: dict, baseline: dict, tolerances: dict[str, float]) -> list[Row]:
    """Rows for every baseline metric whose kind has a tolerance (``tolerances[kind]``)."""
    cur, base = flatten(current), flatten(baseline)
    rows = []
    for name, b in sorted(base.items()):
        kind = metric_kind(name)
        if kind is None or kind not in tolerances:
            continue
        tol = tolerances[kind]
        c = cur.get(name)
        if c is None:
            rows.append(Row(name, b, None, tol, "MISSING"))
            continue
        worse = (b - c) if HIGHER_IS_BETTER[kind] else (c - b)
        status = "REGRESSED" if worse > tol else ("better" if worse < -tol else "ok")
        rows.append(Row(name, b, c, tol, status))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'metric':40s} {'baseline':>10s} {'current':>10s} {'delta':>9s} {'tol':>7s}  status"]
    for r in rows:
        cur = "-" if r.current is None else f"{r.current:10.4f}"
        delta = "-" if r.delta is None else f"{r.delta:+9.4f}"
        lines.append(f"{r.metric:40s} {r.baseline:10.4f} {cur:>10s} {delta:>9s} {r.tolerance:7.4f}  {r.status}")
    return "\n".join(lines)


def check(current_path: str | Path, baseline_path: str | Path) -> tuple[bool, str]:
    """Returns (passed, table). The baseline file holds ``{"metrics": ..., "tolerances": ...}``."""
    current_path, baseline_path = Path(current_path), Path(baseline_path)
    for p in (current_path, baseline_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: metrics file not found")
    baseline = json.loads(baseline_path.read_text())
    if "metrics" not in baseline or "tolerances" not in baseline:
        raise ValueError(f"{baseline_path}: expected keys 'metrics' and 'tolerances'")
    rows = compare(json.loads(current_path.read_text()), baseline["metrics"], baseline["tolerances"])
    if not rows:
        raise ValueError(f"{baseline_path}: no metric of a known kind ({', '.join(HIGHER_IS_BETTER)}) to compare")
    passed = not any(r.status in ("REGRESSED", "MISSING") for r in rows)
    return passed, format_table(rows)
