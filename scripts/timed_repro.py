#!/usr/bin/env python3
"""Run ``dvc repro`` and record each stage's wall time and peak memory.

    python scripts/timed_repro.py [--out reports/benchmarks/repro_cpu.json] [-- dvc repro args]

The stage being run is read from DVC's ``Running stage '...'`` lines; the peak resident memory
of a stage is the largest sum, over one-second samples, of the RSS of every process under
``dvc`` (the stage command and its children; the ``dvc`` process itself is left out). The
result file lists the stages in the order they ran, the total wall time and the machine's core
count, so that runs on different machines can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _rss_below(root: int) -> int:
    """Resident bytes of every process below ``root`` (not ``root`` itself)."""
    tree = _children()
    total, todo = 0, list(tree.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("dvc_args", nargs="*", help="extra arguments for dvc repro")
    args = parser.parse_args()

    stages: list[dict] = []
    current: dict | None = None
    lock = threading.Lock()
    started = time.time()
    proc = subprocess.Popen(["dvc", "repro", *args.dvc_args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)

    def sample() -> None:
        while proc.poll() is None:
            rss = _rss_below(proc.pid)
            with lock:
                if current is not None:
                    current["peak_rss_gb"] = max(current["peak_rss_gb"], rss / 2**30)
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = STAGE_LINE.search(line)
        if match:
            now = time.time()
            with lock:
                if current is not None:
                    current["wall_s"] = round(now - current.pop("_t0"), 1)
                current = {"stage": match.group(1), "peak_rss_gb": 0.0, "_t0": now}
                stages.append(current)
    code = proc.wait()
    sampler.join(timeout=5)
    now = time.time()
    with lock:
        if current is not None:
            current["wall_s"] = round(now - current.pop("_t0"), 1)
    for stage in stages:
        stage["peak_rss_gb"] = round(stage["peak_rss_gb"], 3)
    result = {
        "command": "dvc repro " + " ".join(args.dvc_args),
        "exit_code": code,
        "total_wall_s": round(now - started, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "stages": stages,
        "max_peak_rss_gb": max((s["peak_rss_gb"] for s in stages), default=0.0),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: {result['total_wall_s']:.0f} s, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
