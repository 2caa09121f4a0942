#!/usr/bin/env python3
"""Screenshots of the MLflow UI over this repository's real ``mlflow.db`` (the runs that
``dvc repro`` logged), for the README:

    python scripts/mlflow_screenshot.py          # reports/mlflow_ui.png, reports/mlflow_chart.png

``mlflow_ui.png``: the experiment's runs page, every ``pipeline ...`` parent run with its stage
runs (``stylegan``, ``train@...``, ``evaluate@...``) nested under it. ``mlflow_chart.png``: the
same runs in MLflow's chart view, which compares each logged metric across the runs (PSNR, SSIM,
the FDs of the evaluations, the training losses). The UI is served by ``faceinpaint.ui`` on
127.0.0.1 at a free port and rendered by headless Chromium (Debian's ``chromium``, which
``scripts/setup.sh`` installs); nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url} did not answer within {seconds} s")


def screenshot(chromium: str, profile: Path, url: str, out: Path, size: str, budget_ms: int) -> None:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           f"--window-size={size}", f"--screenshot={out}", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=180)
    finally:
        stop(proc)
    if not out.is_file() or out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{out}: Chromium wrote no screenshot")


def main(argv=None) -> int:
    from mlflow import MlflowClient

    from faceinpaint import tracking
    from faceinpaint.ui import server_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports"), help="folder for the two PNGs")
    parser.add_argument("--size", default="1600,1000", help="browser window, width,height")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    uri = tracking.tracking_uri()
    database = Path(uri[len("sqlite:///"):])
    if not database.is_file():
        sys.exit(f"no tracking database at {database}: run `dvc repro` first (with MLflow on)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        sys.exit("Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
    experiment = MlflowClient(uri).get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", tracking.DEFAULT_EXPERIMENT))
    if experiment is None:
        sys.exit(f"{database}: no experiment {tracking.DEFAULT_EXPERIMENT!r}")
    runs = MlflowClient(uri).search_runs([experiment.experiment_id], max_results=500)
    print(f"{database}: {len(runs)} runs in {experiment.name!r}")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen(server_command(port=port, backend_uri=uri), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/health", proc)
            page = f"{base}/#/experiments/{experiment.experiment_id}/runs"
            order = "orderByKey=" + urllib.parse.quote("attributes.start_time") + "&orderByAsc=false"
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            screenshot(chromium, Path(tmp) / "chromium", f"{page}?{order}", out / "mlflow_ui.png", args.size, 30000)
            screenshot(chromium, Path(tmp) / "chromium", f"{page}?{order}&compareRunsMode=CHART", out / "mlflow_chart.png",
                       args.size, 40000)
        finally:
            stop(proc)
            log.close()
    print(f"wrote {out / 'mlflow_ui.png'}, {out / 'mlflow_chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
