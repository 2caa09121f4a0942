"""CI metric check: a run's ``reports/metrics.json`` against a committed baseline, exactly.

``dvc metrics diff`` always exits 0, so CI uses this instead. Same-seed runs of the `smoke`
profile are bit-for-bit reproducible on one machine kind, so any metric that moves by more than
``rel_tolerance`` (relative, default 1e-6: float formatting only) in either direction is
``CHANGED`` and fails the check, as does a metric that is ``MISSING`` from the run or ``NEW`` in
it. A change that moves the metrics on purpose regenerates the baseline in the same commit
(``scripts/smoke_baseline.py``) and pastes this check's table into the commit message. Against a
baseline of another CPU kind (a fallback, see below), which cannot be regenerated on this machine,
a ``NEW`` metric is listed but does not fail; ``CHANGED`` and ``MISSING`` still do.

"One machine kind" is narrower than it looks: the same wheel computes other roundings on another
CPU (a smoke run on an Intel Xeon with AVX-512 moved PSNR by up to 0.15 dB against the AMD EPYC
(AVX2) baseline, and forcing AVX2 code paths did not restore it). So each baseline is kept per
:func:`numerics_kind` (vendor, ISA, CPU family and model; two AMD EPYC machines with AVX2
differed too): :func:`baseline_path` picks this machine's file, else that of its vendor and ISA
(``smoke-GenuineIntel-AVX512.json``), else ``smoke.json`` (the first AMD EPYC machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import flatten
from .metrics import HIGHER_IS_BETTER  # the metric kinds a metrics file is checked on
DEFAULT_REL_TOLERANCE = 1e-6


def numerics_kind() -> str:
    """The CPU vendor, the widest vector ISA PyTorch dispatches to, and the CPU's family and model
    numbers, e.g. ``AuthenticAMD-AVX2-f25m1``: same-seed runs are bit-identical on one machine,
    not across kinds, and two AMD EPYC machines that both dispatch to AVX2 were seen to round the
    smoke run differently (34 of its 49 metrics), so vendor and ISA alone do not name a kind."""
    import torch

    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    kind = f"{info.get('vendor_id', 'unknown')}-{torch.backends.cpu.get_cpu_capability()}"
    if "cpu family" in info and "model" in info:
        kind += f"-f{info['cpu family']}m{info['model']}"
    return kind


def kind_candidates(kind: str) -> list[str]:
    """``kind`` and its vendor-ISA prefix (the name baselines were kept under before the family
    and model were part of it), most specific first."""
    parts = kind.split("-")
    return [kind] + (["-".join(parts[:2])] if len(parts) > 2 else [])


def baseline_path(default: str | Path, kind: str | None = None) -> Path:
    """``<stem>-<kind><suffix>`` beside ``default`` for the first of :func:`kind_candidates`
    whose file exists, else ``default``."""
    default = Path(default)
    for k in kind_candidates(kind or numerics_kind()):
        own = default.with_name(f"{default.stem}-{k}{default.suffix}")
        if own.is_file():
            return own
    return default


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
    own = baseline.get("numerics_kind") == numerics_kind()
    passed = all(r.status == "equal" or (r.status == "NEW" and not own) for r in rows)
    table = format_table(rows)
    if not own and any(r.status == "NEW" for r in rows):
        table += (f"\nNEW metrics are not failures here: {baseline_path.name} was recorded on another CPU kind "
                  f"({baseline.get('numerics_kind', 'unnamed')}, this one {numerics_kind()}) and cannot be regenerated "
                  "on this machine; scripts/smoke_baseline.py writes this kind's own file")
    return passed, table
