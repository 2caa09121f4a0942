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
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def screenshot(chromium: str, profile: Path, url: str, out: Path, size: str, budget_ms: int) -> None:
    from faceinpaint.ui import CHROMIUM_FLAGS, stop_group

    cmd = [chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           f"--window-size={size}", f"--screenshot={out}", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=180)
    finally:
        stop_group(proc)
    if not out.is_file() or out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{out}: Chromium wrote no screenshot")


def main(argv=None) -> int:
    from mlflow import MlflowClient

    from faceinpaint import tracking
    from faceinpaint.ui import chromium_path, free_port, server_command, start_background, stop_group, wait_until_up

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports"), help="folder for the two PNGs")
    parser.add_argument("--size", default="1900,1100", help="browser window, width,height")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    uri = tracking.tracking_uri()
    database = Path(uri[len("sqlite:///"):])
    if not database.is_file():
        sys.exit(f"no tracking database at {database}: run `dvc repro` first (with MLflow on)")
    chromium = chromium_path()
    if chromium is None:
        sys.exit("Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
    experiment = MlflowClient(uri).get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", tracking.DEFAULT_EXPERIMENT))
    if experiment is None:
        sys.exit(f"{database}: no experiment {tracking.DEFAULT_EXPERIMENT!r}")
    runs = MlflowClient(uri).search_runs([experiment.experiment_id], max_results=500)
    print(f"{database}: {len(runs)} runs in {experiment.name!r}")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = start_background(server_command(port=port, backend_uri=uri), log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/health", proc, log, seconds=120)
            page = f"{base}/#/experiments/{experiment.experiment_id}/runs"
            # sorted by run name the table lists every run flat (sorted by time it folds the stage runs
            # under their parent); "pipeline ..." parents sort after "evaluate@..." and before "train@..."
            order = "orderByKey=" + urllib.parse.quote("tags.`mlflow.runName`") + "&orderByAsc=true"
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            screenshot(chromium, Path(tmp) / "chromium", f"{page}?{order}", out / "mlflow_ui.png", args.size, 30000)
            screenshot(chromium, Path(tmp) / "chromium", f"{page}?{order}&compareRunsMode=CHART", out / "mlflow_chart.png",
                       args.size, 40000)
        finally:
            stop_group(proc)
    print(f"wrote {out / 'mlflow_ui.png'}, {out / 'mlflow_chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
