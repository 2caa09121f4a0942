#!/usr/bin/env python3
"""Screenshots of the MLflow UI over this repository's real ``mlflow.db`` (the runs that
``dvc repro`` logged), for the README:

    python scripts/mlflow_screenshot.py          # reports/mlflow_ui.png, reports/mlflow_compare.png

``mlflow_ui.png``: the experiment's runs page as MLflow shows it (newest first), with every
``pipeline ...`` parent run expanded, so its stage runs (``stylegan``, ``train@...``,
``evaluate@...``) stand nested under it. ``mlflow_compare.png``: MLflow's run comparison of the
newest evaluation of each model (``evaluate@...`` runs that logged ``psnr``): the run details and the metric table, side by
side (MLflow's table box shows its first seven rows, sorted by name: the FDs, hole L1, ID
similarity, images shown, LPIPS; PSNR and SSIM are below its fold).

The UI is served by ``faceinpaint.ui`` on 127.0.0.1 at a free port and driven by headless
Chromium over the DevTools protocol (:class:`faceinpaint.ui.HeadlessPage`: it clicks the
expanders); nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def newest_evaluations(runs) -> list:
    """The newest ``evaluate@<model>`` run of each model that logged its metrics, in model order."""
    from faceinpaint.models import INPAINTERS

    newest = {}
    for run in runs:
        name = run.info.run_name or ""
        if name.startswith("evaluate@") and "psnr" in run.data.metrics:
            model = name.split("@", 1)[1]
            if model not in newest or run.info.start_time > newest[model].info.start_time:
                newest[model] = run
    return [newest[m] for m in INPAINTERS if m in newest]


def main(argv=None) -> int:
    from mlflow import MlflowClient

    from faceinpaint import tracking
    from faceinpaint.ui import (MLFLOW_RUN_EXPANDER, MLFLOW_SHOWN_RUN_IDS, HeadlessPage, free_port, server_command,
                                start_background, stop_group, wait_until_up)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports"), help="folder for the two PNGs")
    parser.add_argument("--size", default="1900,1100", help="browser window, width,height")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    uri = tracking.tracking_uri()
    database = Path(uri[len("sqlite:///"):])
    if not database.is_file():
        sys.exit(f"no tracking database at {database}: run `dvc repro` first (with MLflow on)")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", tracking.DEFAULT_EXPERIMENT))
    if experiment is None:
        sys.exit(f"{database}: no experiment {tracking.DEFAULT_EXPERIMENT!r}")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    evaluations = newest_evaluations(runs)
    print(f"{database}: {len(runs)} runs in {experiment.name!r}; comparing "
          f"{', '.join(r.info.run_name for r in evaluations) or 'no evaluations'}")
    width, height = (int(v) for v in args.size.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = start_background(server_command(port=port, backend_uri=uri), log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/health", proc, log, seconds=120)
            with HeadlessPage((width, height)) as page:
                page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs",
                          ready=f"!!document.querySelector(\"{MLFLOW_RUN_EXPANDER}\")")
                rows = f"{MLFLOW_SHOWN_RUN_IDS}.length"
                folded = page.evaluate(rows)
                page.evaluate(f"document.querySelectorAll(\"{MLFLOW_RUN_EXPANDER}\").forEach(b => b.click())")
                page.wait_for(f"{rows} > {folded}", what="the stage runs under their parents")
                page.evaluate("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")  # assistant panel
                time.sleep(2)
                page.screenshot(out / "mlflow_ui.png")
                print(f"runs page: {folded} rows folded, {page.evaluate(rows)} expanded")
                if evaluations:
                    ids = json.dumps([r.info.run_id for r in evaluations])
                    query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([experiment.experiment_id])})
                    page.goto(f"{base}/#/compare-runs?{query}", ready="document.body.innerText.includes('Run details')")
                    fold_compare_sections(page)
                    page.screenshot(out / "mlflow_compare.png")
        finally:
            stop_group(proc)
    print(f"wrote {out / 'mlflow_ui.png'}" + (f", {out / 'mlflow_compare.png'}" if evaluations else ""))
    return 0


def fold_compare_sections(page) -> None:
    """Bring the metric table (every value, exact) to the top: fold the plots and the params
    sections, which the page shows first."""
    folded = page.evaluate("""(() => {
        const heads = [...document.querySelectorAll('h2, h3, [role=button]')];
        const fold = name => { const h = heads.find(h => h.innerText.trim().startsWith(name)); if (h) h.click(); return !!h; };
        return ['Visualizations', 'Parameters'].filter(fold);
    })()""")
    if len(folded) != 2:
        print(f"warning: folded only {folded} of the compare page's sections", file=sys.stderr)
    time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
