"""The MLflow UI really shows the suite's runs: log runs the way the stages do, serve the SQLite
database with ``faceinpaint.ui`` on 127.0.0.1, render the UI in headless Chromium."""

import html
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from faceinpaint import tracking
from faceinpaint.ui import UIError, server_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def test_server_command_is_loopback_and_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = server_command(port=5123, backend_uri=uri)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    with pytest.raises(UIError, match="0.0.0.0.*loopback"):
        server_command(host="0.0.0.0", backend_uri=uri)
    with pytest.raises(UIError, match="SQLite"):
        server_command(backend_uri="postgresql://localhost/x")
    assert "0.0.0.0" in server_command(host="0.0.0.0", backend_uri=uri, allow_remote=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible_text(dom: str) -> str:
    """The DOM's text with tags stripped and whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def render(page: str, flags: list[str], expected: list[str], tries: int = 4) -> str:
    """The page's visible text after Chromium ran its scripts; retried with a longer
    virtual-time budget while the React app is still loading (a cold server can be slow)."""
    dom = ""
    for attempt in range(tries):
        budget = 15000 * (attempt + 1)
        dom = visible_text(subprocess.run([CHROMIUM, *flags, f"--virtual-time-budget={budget}", "--dump-dom", page],
                                          capture_output=True, text=True, timeout=240).stdout)
        if all(text in dom for text in expected):
            break
    return dom


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_ui_lists_the_pipeline_runs(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("FACEINPAINT_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FACEINPAINT_PIPELINE_RUN", "ui-test-pipeline")
    monkeypatch.chdir(tmp_path)  # the parent-run file goes to ./artifacts, here not the repo's
    grid = (np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8)
    for stage, model in (("train@uitestfull", "full"), ("evaluate@uitestfull", "full")):
        with tracking.start_run(stage, model, {"profile": "smoke", "resolution": 32}):
            for step in range(3):
                tracking.log_metrics({"loss": 1.0 / (step + 1)}, step)
            tracking.log_image(grid, "samples.png")

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name for r in runs} >= {"train@uitestfull", "evaluate@uitestfull"}

    port = free_port()
    proc = subprocess.Popen(server_command(port=port, backend_uri=uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
        profile = tmp_path / "chromium"
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        # the runs table: the pipeline's parent run, its two stage runs nested under it
        parent = next(r for r in runs if r.info.run_name not in ("train@uitestfull", "evaluate@uitestfull"))
        dom = render(page, flags, [parent.info.run_name, "3 matching runs"])
        assert parent.info.run_name in dom and "3 matching runs" in dom, dom[-3000:]
        child = next(r for r in runs if r.info.run_name == "train@uitestfull")
        child_page = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}"
        dom = render(child_page, flags, ["train@uitestfull", "loss"])
        assert "train@uitestfull" in dom and "loss" in dom, dom[-3000:]
        shot = tmp_path / "mlflow_ui.png"
        subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=30000", "--window-size=1400,900", f"--screenshot={shot}", page],
                       capture_output=True, timeout=180)
        pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
        assert pixels.shape == (900, 1400) and pixels.std() > 5  # a rendered page, not a blank one
        (ROOT / "reports").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "reports" / "mlflow_ui.png")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
