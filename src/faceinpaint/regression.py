"""CI metric check: a run's ``reports/metrics.json`` against a committed baseline, exactly.

``dvc metrics diff`` always exits 0, so CI uses this instead. Same-seed runs of the `smoke`
profile are bit-for-bit reproducible on one machine kind, so any metric that moves by more than
``rel_tolerance`` (relative, default 1e-6: float formatting only) in either direction is
``CHANGED`` and fails the check, as does a metric that is ``MISSING`` from the run or ``NEW`` in
it. A change that moves the metrics on purpose regenerates the baseline in the same commit
(``scripts/smoke_baseline.py``) and pastes this check's table into the commit message.

"One machine kind" is narrower than it looks: the same wheel computes other roundings on another
CPU (a smoke run on an Intel Xeon with AVX-512 moved PSNR by up to 0.15 dB against the AMD EPYC
(AVX2) baseline, and forcing AVX2 code paths did not restore it). So each baseline is kept per
:func:`numerics_kind` (``smoke-GenuineIntel-AVX512.json`` beside ``smoke.json``, which was
recorded on ``AuthenticAMD-AVX2``): :func:`baseline_path` picks this machine's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import flatten
from .metrics import HIGHER_IS_BETTER  # the metric kinds a metrics file is checked on
DEFAULT_REL_TOLERANCE = 1e-6


def numerics_kind() -> str:
    """The CPU vendor and the widest vector ISA PyTorch dispatches to on this machine, e.g.
    ``AuthenticAMD-AVX2`` or ``GenuineIntel-AVX512``: same-seed runs are bit-identical within a
    kind, not across kinds."""
    import torch

    vendor = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}"


def baseline_path(default: str | Path, kind: str | None = None) -> Path:
    """``<stem>-<kind><suffix>`` beside ``default`` if that file exists, else ``default``."""
    default = Path(default)
    own = default.with_name(f"{default.stem}-{kind or numerics_kind()}{default.suffix}")
    return own if own.is_file() else default


def metric_kind(name: str) -> str | None:
    """``'psnr'`` for ``full.psnr``, ``'fd'`` for ``full.fd_efficientnet_lite0``, ... or None."""
    leaf = name.rsplit(".", 1)[-1]
    for kind in HIGHER_IS_BETTER:
        if leaf == kind or leaf.startswith(kind + "_"):
            return kind
    return None


def numeric_leaves(d: dict) -> dict[str, float]:
    """The numbers of a nested metrics dict under dotted keys (:func:`faceinpaint.config.flatten`),
    as floats; strings, lists, booleans and nulls are left out."""
    return {k: float(v) for k, v in flatten(d).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Row:
    metric: str
    baseline: float | None
    current: float | None
    status: str  # equal | CHANGED | MISSING | NEW

    @property
    def rel_change(self) -> float | None:
        if self.current is None or self.baseline is None:
            return None
        return abs(self.current - self.baseline) / max(abs(self.baseline), 1e-12)


def compare(current: dict, baseline: dict, rel_tolerance: float = DEFAULT_REL_TOLERANCE) -> list[Row]:
    """One row per metric (a key of a known kind) in either file."""
    cur, base = numeric_leaves(current), numeric_leaves(baseline)
    rows = []
    for name in sorted(set(cur) | set(base)):
        if metric_kind(name) is None:
            continue
        b, c = base.get(name), cur.get(name)
        if b is None:
            rows.append(Row(name, None, c, "NEW"))
        elif c is None:
            rows.append(Row(name, b, None, "MISSING"))
        else:
            same = abs(c - b) <= rel_tolerance * max(abs(b), 1e-12)
            rows.append(Row(name, b, c, "equal" if same else "CHANGED"))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'metric':44s} {'baseline':>16s} {'current':>16s} {'rel change':>10s}  status"]
    for r in rows:
        base = "-" if r.baseline is None else f"{r.baseline:16.10g}"
        cur = "-" if r.current is None else f"{r.current:16.10g}"
        rel = "-" if r.rel_change is None else f"{r.rel_change:10.1e}"
        lines.append(f"{r.metric:44s} {base:>16s} {cur:>16s} {rel:>10s}  {r.status}")
    changed = sum(r.status != "equal" for r in rows)
    lines.append(f"{changed} of {len(rows)} metrics differ from the baseline")
    return "\n".join(lines)


def check(current_path: str | Path, baseline_path: str | Path) -> tuple[bool, str]:
    """Returns (passed, table). The baseline file holds ``{"metrics": ..., "rel_tolerance": ...}``."""
    current_path, baseline_path = Path(current_path), Path(baseline_path)
    for p in (current_path, baseline_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: metrics file not found")
    baseline = json.loads(baseline_path.read_text())
    if "metrics" not in baseline:
        raise ValueError(f"{baseline_path}: expected a 'metrics' key (and optionally 'rel_tolerance')")
    rows = compare(json.loads(current_path.read_text()), baseline["metrics"],
                   float(baseline.get("rel_tolerance", DEFAULT_REL_TOLERANCE)))
    if not rows:
        raise ValueError(f"{baseline_path}: no metric of a known kind ({', '.join(HIGHER_IS_BETTER)}) to compare")
    passed = all(r.status == "equal" for r in rows)
    return passed, format_table(rows)
