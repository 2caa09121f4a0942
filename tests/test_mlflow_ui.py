"""The MLflow UI really shows the suite's runs: log a pipeline's runs through
``faceinpaint.tracking`` as the stages do, serve the SQLite database with ``faceinpaint.ui`` on
127.0.0.1, and read what headless Chromium renders of the React app."""

import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from faceinpaint import tracking
from faceinpaint.ui import (CHROMIUM_FLAGS, UIError, chromium_path, free_port, serve, server_command, start_background,
                            stop_group, url, wait_until_up)

CHROMIUM = chromium_path()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
PIPELINE = "uitest"
STAGES = {"train@structure": "structure", "train@full": "full"}
STEPS = 5
SAMPLE = "samples/step_0000005.png"


def stage_params(model: str) -> dict:
    return {"profile": "smoke", "resolution": 64, "lr_generator": 0.002 if model == "full" else 0.001}


def stage_losses(step: int) -> dict:
    return {"loss_l1": 1.0 / step, "loss_adv": 0.5 + 0.1 * step}


# ---------------------------------------------------------------------------- server_command


def test_server_command_serves_the_sqlite_database_on_loopback(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = server_command(port=5123, backend_uri=uri)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    artifacts = (tmp_path / "mlartifacts").as_uri()
    assert cmd[cmd.index("--default-artifact-root") + 1] == artifacts == cmd[cmd.index("--artifacts-destination") + 1]
    assert set(cmd[cmd.index("--allowed-hosts") + 1].split(",")) == {"127.0.0.1:5123", "localhost:5123", "[::1]:5123"}
    assert "--disable-security-middleware" not in cmd


def test_server_command_defaults_to_the_tracking_database(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/runs.db")
    cmd = server_command()
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/runs.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    with pytest.raises(tracking.TrackingError, match="file store"):
        server_command()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_server_command_refuses_a_non_loopback_host(tmp_path, host):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(UIError, match=f"refusing to serve the MLflow UI on '{re.escape(host)}'.*allow_remote"):
        server_command(host=host, backend_uri=uri)
    cmd = server_command(host=host, port=5123, backend_uri=uri, allow_remote=True)
    assert cmd[cmd.index("--host") + 1] == host


def test_server_command_refuses_other_backends_and_bad_ports(tmp_path):
    with pytest.raises(UIError, match="SQLite"):
        server_command(backend_uri="postgresql://localhost/runs")
    with pytest.raises(UIError, match="already a server"):
        server_command(backend_uri="http://127.0.0.1:5000")
    with pytest.raises(UIError, match="port"):
        server_command(port=70000, backend_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_url_names_the_loopback_address():
    assert url() == "http://127.0.0.1:5000"
    assert url("0.0.0.0", 5001) == "http://127.0.0.1:5001"
    assert url("::1", 5002) == "http://[::1]:5002"


# ---------------------------------------------------------------------------- the UI in Chromium


@dataclass
class UIServer:
    uri: str  # sqlite:///<tmp>/mlflow.db
    base: str  # http://127.0.0.1:<port>
    experiment_id: str
    run_ids: dict  # run name -> id
    sample: np.ndarray  # the image logged as SAMPLE by train@full
    browser_profile: Path


def log_pipeline(root: Path, uri: str) -> np.ndarray:
    """One pipeline run as ``dvc repro`` logs it: a parent run and one child run per stage, each
    with params, per-step losses and a sample grid. Returns train@full's sample grid."""
    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEINPAINT_MLFLOW", "1")
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("FACEINPAINT_PIPELINE_RUN", PIPELINE)
        mp.delenv("FACEINPAINT_PARENT_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.chdir(root)  # the parent-run record goes to ./artifacts: here, not the repository's
        for stage, model in STAGES.items():
            with tracking.start_run(stage, model, stage_params(model)):
                for step in range(1, STEPS + 1):
                    tracking.log_metrics(stage_losses(step), step)
                grid = (rng.random((64, 128, 3)) * 255).astype(np.uint8)
                tracking.log_image(grid, SAMPLE)
    return grid


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root}/mlflow.db"
    sample = log_pipeline(root, uri)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs.pop(f"pipeline {PIPELINE}")
    assert set(runs) == set(STAGES)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())

    port = free_port()
    log = root / "server.log"
    proc = start_background(server_command(port=port, backend_uri=uri), log, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/health", proc, log)
        yield UIServer(uri, base, experiment.experiment_id,
                       {parent.info.run_name: parent.info.run_id, **{n: r.info.run_id for n, r in runs.items()}},
                       sample, root / "chromium")
    finally:
        stop_group(proc)


def chromium(server: UIServer, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium on the server's pages; its stdout. Killed as a group on timeout."""
    proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={server.browser_profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        stop_group(proc)


def rendered_dom(server: UIServer, page: str, ready, tries: int = 4) -> str:
    """The DOM after Chromium ran the app's scripts; retried with a longer virtual-time budget
    until ``ready(dom)`` (a cold server answers slowly)."""
    dom = ""
    for attempt in range(1, tries + 1):
        dom = chromium(server, f"--virtual-time-budget={10000 * attempt}", "--dump-dom", server.base + page)
        if ready(dom):
            break
    return dom


def shows(*texts: str):
    """A ``ready`` test: every text is visible on the page."""
    return lambda dom: all(text in visible_text(dom) for text in texts)


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def runs_page(server: UIServer) -> str:
    # sorted by run name, the table lists the stage runs flat instead of folded under their parent
    order = urllib.parse.quote("tags.`mlflow.runName`")
    return f"/#/experiments/{server.experiment_id}/runs?orderByKey={order}&orderByAsc=true"


@needs_chromium
def test_runs_page_lists_the_pipeline_and_its_stage_runs(ui_server):
    names = list(ui_server.run_ids)  # "pipeline uitest", "train@structure", "train@full"
    text = visible_text(rendered_dom(ui_server, runs_page(ui_server), shows(*names, "3 matching runs")))
    for name in names:
        assert name in text, text[-3000:]
    assert "3 matching runs" in text
    assert text.index("pipeline uitest") < text.index("train@full") < text.index("train@structure")  # ascending names

    shot = ui_server.browser_profile.parent / "mlflow_ui.png"
    chromium(ui_server, "--virtual-time-budget=20000", "--window-size=1600,1000", "--hide-scrollbars",
             f"--screenshot={shot}", ui_server.base + runs_page(ui_server))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape == (1000, 1600, 3)
    assert pixels.var() > 100  # a rendered page, not a blank or single-colour one
    # the committed reports/mlflow_ui.png shows real pipeline runs; this one stays in the temp dir


@needs_chromium
def test_headless_page_expands_the_parent_to_show_its_stage_runs(ui_server, tmp_path):
    """What scripts/mlflow_screenshot.py does: MLflow's default view (newest first) folds the stage
    runs under their parent; clicking the expander shows them, nested, with the ids MLflow stored."""
    from faceinpaint.ui import MLFLOW_RUN_EXPANDER, MLFLOW_SHOWN_RUN_IDS, HeadlessPage

    # run id -> the text of its row (all column sections)
    rows = f"""Object.fromEntries({MLFLOW_SHOWN_RUN_IDS}.map(id => [id,
        [...document.querySelectorAll(`[role=row][row-id="${{id}}"]`)].map(r => r.innerText).join(' ')]))"""
    parent = ui_server.run_ids[f"pipeline {PIPELINE}"]
    with HeadlessPage((1600, 1000)) as page:
        page.goto(f"{ui_server.base}/#/experiments/{ui_server.experiment_id}/runs",
                  ready=f"!!document.querySelector(\"{MLFLOW_RUN_EXPANDER}\")")
        folded = list(page.evaluate(rows).items())
        assert [row_id for row_id, _ in folded] == [parent]
        assert page.evaluate(f"document.querySelectorAll(\"{MLFLOW_RUN_EXPANDER}\").length") == 1  # the parent's only
        page.evaluate(f"document.querySelector(\"{MLFLOW_RUN_EXPANDER}\").click()")
        page.wait_for(f"{MLFLOW_SHOWN_RUN_IDS}.length == {len(ui_server.run_ids)}")
        expanded = page.evaluate(rows)
        shot = page.screenshot(tmp_path / "runs.png")
    assert list(expanded)[0] == parent
    assert set(expanded) == set(ui_server.run_ids.values())
    for name, run_id in ui_server.run_ids.items():
        assert name in expanded[run_id]
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape == (1000, 1600, 3) and pixels.var() > 100


@needs_chromium
def test_stage_run_page_shows_params_last_losses_and_parent(ui_server):
    run_id = ui_server.run_ids["train@full"]
    params = stage_params("full")
    last = stage_losses(STEPS)
    expected = ["train@full", f"Parameters ({len(params)})", f"Metrics ({len(last)})"]
    page = f"/#/experiments/{ui_server.experiment_id}/runs/{run_id}"
    text = visible_text(rendered_dom(ui_server, page, shows(*expected)))
    for snippet in expected:
        assert snippet in text, text[-3000:]
    for key, value in params.items():
        assert f"{key} {value}" in text
    for key, value in last.items():  # the overview shows the value at the last step
        assert f"{key} {value:g}" in text
    assert f"Parent run pipeline {PIPELINE}" in text
    assert "stage : train@full" in text and "model : full" in text


@needs_chromium
def test_sample_image_artifact_is_served_and_previewed(ui_server):
    run_id = ui_server.run_ids["train@full"]
    query = urllib.parse.urlencode({"path": SAMPLE, "run_uuid": run_id})
    with urllib.request.urlopen(f"{ui_server.base}/get-artifact?{query}", timeout=30) as r:
        served = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    np.testing.assert_array_equal(served, ui_server.sample)

    page = f"/#/experiments/{ui_server.experiment_id}/runs/{run_id}/artifacts/{SAMPLE}"
    # the preview is an <img> of the bytes the app fetched from the server (a blob: URL)
    preview = re.compile(rf'<img[^>]*alt="{re.escape(SAMPLE)}"[^>]*src="blob:')
    dom = rendered_dom(ui_server, page, preview.search)
    assert preview.search(dom), visible_text(dom)[-3000:]


# ---------------------------------------------------------------------------- serve


def test_serve_refuses_a_missing_database(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(UIError, match="no tracking database"):
        serve()
    assert not (tmp_path / "absent.db").exists()


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[2]) == pgid:  # field 5 of stat: process group
            members.append(int(stat.parent.name))
    return members


def test_serve_answers_and_stops_cleanly_on_ctrl_c(ui_server, tmp_path):
    """``serve`` as ``faceinpaint ui`` runs it: Ctrl-C (SIGINT to the terminal's process group)
    stops the server and its workers, and ``serve`` returns 0."""
    port = free_port()
    code = f"import sys; from faceinpaint.ui import serve; sys.exit(serve(port={port}))"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ui_server.uri}
    log = tmp_path / "serve.log"
    proc = start_background([sys.executable, "-c", code], log, cwd=tmp_path, env=env)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, log)
        search = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                                        data=json.dumps({"experiment_ids": [ui_server.experiment_id]}).encode(),
                                        headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(search, timeout=30) as r:
            names = {run["info"]["run_name"] for run in json.load(r)["runs"]}
        assert names == set(ui_server.run_ids)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(proc.pid) == []
    finally:
        stop_group(proc)
