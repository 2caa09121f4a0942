"""Crash, resume and determinism of a real model on the `smoke` profile, through the CLI a user
runs (``faceinpaint train`` / ``evaluate``), in a scratch project with the real data."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, require_data
from faceinpaint.checkpoint import read_checkpoint
from faceinpaint.data import to_tensor_image

CLI = [sys.executable, "-m", "faceinpaint.cli"]


def make_project(path: Path, section: str = "pconv", **budget) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "data").symlink_to(ROOT / "data")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"][section].update(budget)
    raw["profiles"]["smoke"]["evaluate"].update(max_test_images=20, irregular_per_bin=1)
    (path / "params.yaml").write_text(yaml.safe_dump(raw))
    return path


def run(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1")
    return subprocess.run([*CLI, *args], cwd=project, env=env, capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared smoke data folder, shared (read-only) by every scratch project."""
    require_data()
    base = make_project(tmp_path_factory.mktemp("prep") / "p")
    raw = yaml.safe_load((base / "params.yaml").read_text())
    raw["data"]["max_train_images"], raw["data"]["max_test_images"] = 200, 40
    (base / "params.yaml").write_text(yaml.safe_dump(raw))
    run(base, "prepare")
    return base / "artifacts" / "prepared"


def project_with_data(path: Path, prepared: Path, section: str = "pconv", **budget) -> Path:
    project = make_project(path, section, **budget)
    (project / "artifacts").mkdir()
    (project / "artifacts" / "prepared").symlink_to(prepared)
    return project


def model_state(project: Path, model: str = "pconv") -> dict:
    state = torch.load(project / f"artifacts/models/{model}/model.pt", weights_only=True)["state"]
    return state["net" if model == "pconv" else "G"]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_twice_gives_identical_metrics(tmp_path, prepared):
    results = []
    for name in ("a", "b"):
        project = project_with_data(tmp_path / name, prepared, max_steps=12)
        run(project, "train", "pconv")
        run(project, "test-features")
        run(project, "evaluate", "pconv")
        results.append(((project / "reports/metrics/eval_pconv.json").read_bytes(), model_state(project)))
    assert results[0][0] == results[1][0]  # the metrics file, byte for byte
    assert same_state(results[0][1], results[1][1])
    assert json.loads(results[0][0])["psnr"] > 0


# `faceinpaint train ...` with one hook: when ``train_step`` is called for the step after the
# first N (N steps done, with every log line and checkpoint they wrote), it writes a marker file
# and sleeps; the test then kills it. The run's numerics are those of the plain CLI.
PAUSING_CLI = """
import sys, time
from pathlib import Path

import faceinpaint.training as training
from faceinpaint.cli import cli

pause_after, marker = int(sys.argv[1]), Path(sys.argv[2])
real_train = training.train

def train(recipe, *args, **kwargs):
    real_step = recipe.train_step

    def train_step(modules, optimizers, batch, step):
        if step == pause_after:
            marker.write_text(str(step))
            time.sleep(3600)
        return real_step(modules, optimizers, batch, step)

    recipe.train_step = train_step
    return real_train(recipe, *args, **kwargs)

training.train = train
cli(sys.argv[3:], prog_name="faceinpaint")
"""


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, prepared):
    """Killed (SIGKILL) at a known point, paused after step 17 of 20: checkpoints of steps 5,
    10 and 15 were written (15 with an open loss window, steps 13-15), and step 16's log line
    after the last of them. Re-running resumes from step 15, drops that line, and ends with the
    weights and stats.jsonl of an uninterrupted run. Never skipped: the pause makes the kill
    land before the end on any machine."""
    budget = dict(max_steps=20, checkpoint_every=5, log_every=4, sample_every=1000)
    pause_after, last_checkpoint = 17, 15
    reference = project_with_data(tmp_path / "reference", prepared, **budget)
    run(reference, "train", "pconv")

    crashed = project_with_data(tmp_path / "crashed", prepared, **budget)
    marker = tmp_path / "paused"
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1")
    log_file = tmp_path / "crashed.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, str(pause_after), str(marker), "train", "pconv"],
                                cwd=crashed, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the pause (rc {proc.returncode}):\n{log_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for the training to reach the pause"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert marker.read_text() == str(pause_after)
    assert not (crashed / "artifacts/models/pconv/model.pt").exists()
    (run_dir,) = (crashed / "artifacts/models/pconv/runs").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.pt", "previous.pt"]
    assert read_checkpoint(run_dir / "checkpoints/latest.pt")["step"] == last_checkpoint
    logged = [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert logged == [4, 8, 12, 16]  # step 16's line came after the last checkpoint: the resume drops it

    out = run(crashed, "train", "pconv")
    assert "20 steps" in out.stdout
    assert progress(crashed, "pconv")["resumed_from_step"] == last_checkpoint
    assert same_state(model_state(crashed), model_state(reference))
    ref_stats = next((reference / "artifacts/models/pconv/runs").glob("*/stats.jsonl")).read_text()
    got_stats = (run_dir / "stats.jsonl").read_text()
    assert got_stats == ref_stats


def set_params(project: Path, section: str, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["smoke"][section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def progress(project: Path, model: str) -> dict:
    return json.loads((project / f"artifacts/models/{model}/progress.json").read_text())


@pytest.mark.parametrize("model, section, extra", [
    ("variant1", "texture", {}),
    ("pconv", "pconv", {"finetune_from_step": 8}),  # the fine-tuning phase starts inside the extension
    ("rfr", "rfr", {"finetune_from_step": 8}),
    ("structure", "structure", {}),
])
def test_a_larger_budget_continues_the_run(tmp_path, prepared, model, section, extra):
    projects = {}
    for name, first_budget in (("reference", 12), ("grown", 6)):
        projects[name] = project = project_with_data(tmp_path / name, prepared, section, max_steps=first_budget, **extra)
        if model == "structure":
            run(project, "train", "stylegan")  # the same prior in both projects (same seed)
        run(project, "train", model)
    grown = projects["grown"]
    set_params(grown, section, max_steps=12)
    out = run(grown, "train", model)
    assert "12 steps" in out.stdout
    assert progress(grown, model)["resumed_from_step"] == 6
    key = {"variant1": "G", "pconv": "net", "rfr": "net", "structure": "encoder"}[model]
    state = lambda p: torch.load(p / f"artifacts/models/{model}/model.pt", weights_only=True)["state"][key]  # noqa: E731
    assert same_state(state(grown), state(projects["reference"]))


def test_a_retrained_prior_starts_structure_afresh_against_it(tmp_path, prepared):
    project = project_with_data(tmp_path / "p", prepared, "structure", max_steps=6)
    set_params(project, "stylegan", max_steps=10)
    run(project, "train", "stylegan")
    run(project, "train", "structure")
    first_run = {p.name for p in (project / "artifacts/models/structure/runs").iterdir()}
    set_params(project, "stylegan", max_steps=14)
    run(project, "train", "stylegan")
    assert progress(project, "stylegan")["resumed_from_step"] == 10  # the prior continued
    out = run(project, "train", "structure")
    assert "6 steps" in out.stdout
    assert progress(project, "structure")["resumed_from_step"] == 0  # not resumed from the old prior's run
    runs = {p.name for p in (project / "artifacts/models/structure/runs").iterdir()}
    assert len(runs) == 1 and runs != first_run  # only the current run stays in the DVC output
    assert {p.name for p in (project / "artifacts/archive/structure").iterdir()} == first_run
    state = torch.load(next((project / "artifacts/models/structure/runs").glob("*/checkpoints/latest.pt")), weights_only=True)
    prior = (project / "artifacts/models/stylegan/stylegan2.pt").read_bytes()
    assert state["params"]["upstream.stylegan.sha256"] == hashlib.sha256(prior).hexdigest()
    assert not list((project / "artifacts/models/structure/runs").glob("*/checkpoints/previous.pt"))


def test_changed_architecture_trains_in_its_own_run_folder_and_switching_back_resumes(tmp_path, prepared):
    project = project_with_data(tmp_path / "p", prepared, max_steps=4)
    run(project, "train", "pconv")
    (first,) = [p.name for p in (project / "artifacts/models/pconv/runs").iterdir()]
    set_params(project, "pconv", base_width=16)
    run(project, "train", "pconv")
    assert progress(project, "pconv")["resumed_from_step"] == 0
    assert [p.name for p in (project / "artifacts/archive/pconv").iterdir()] == [first]
    set_params(project, "pconv", base_width=8, max_steps=6)
    run(project, "train", "pconv")
    assert progress(project, "pconv")["resumed_from_step"] == 4  # the archived run came back
    assert [p.name for p in (project / "artifacts/models/pconv/runs").iterdir()] == [first]


def test_bad_params_fail_with_the_key_path(tmp_path):
    project = make_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["smoke"]["texture"]["softmax_scale"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(project, "train", "full", check=False)
    assert out.returncode != 0 and "profiles.smoke.texture.softmax_scale" in out.stderr


def test_smoke_structure_stage_beats_a_mean_colour_fill_on_held_out_holes(tmp_path, prepared, monkeypatch):
    """Stage 1 on the smoke profile (prior and encoder trained through the CLI): its L1 inside
    the ten evaluation squares of the held-out test images is below that of filling every hole
    with the training images' mean colour."""
    from faceinpaint.config import load_config
    from faceinpaint.masks import square_masks
    from faceinpaint.recipes import load_inpainter

    project = project_with_data(tmp_path / "stage1", prepared, "structure")
    run(project, "train", "stylegan")
    run(project, "train", "structure")
    monkeypatch.chdir(project)
    cfg = load_config("params.yaml")
    train = np.load(prepared / "train_images.npy")
    test = to_tensor_image(np.load(prepared / "test_images.npy"))
    squares = torch.from_numpy(square_masks(cfg.resolution, cfg.masks.square_min_frac, cfg.masks.square_max_frac))
    mask = squares[torch.arange(len(test)) % len(squares)][:, None].float()  # test image i: square i mod 10
    with torch.no_grad():
        composite = load_inpainter(cfg, "structure")(test * (1 - mask), mask)["composite"]
    mean_colour = torch.tensor(train.reshape(-1, 3).mean(0) / 127.5 - 1, dtype=torch.float32).view(1, 3, 1, 1)
    mean_fill = test * (1 - mask) + mean_colour * mask
    hole_l1 = lambda x: ((x - test).abs() * mask).sum() / (mask.sum() * 3)  # noqa: E731
    assert torch.equal(composite * (1 - mask), test * (1 - mask))  # known pixels untouched
    assert hole_l1(composite) < hole_l1(mean_fill), (float(hole_l1(composite)), float(hole_l1(mean_fill)))


def test_finalize_checks_the_export_deletes_the_state_and_refuses_a_larger_budget(tmp_path, prepared):
    """`faceinpaint finalize`: the export must equal the last checkpoint's weights (a tampered
    one is refused, naming the tensor); afterwards the training state is gone, a re-run of the
    stage keeps the export bit for bit and rewrites its metrics, and a larger budget fails
    with a message naming the step it was declared final at."""
    project = project_with_data(tmp_path / "p", prepared, "structure", max_steps=6)
    run(project, "train", "stylegan")
    run(project, "train", "structure")
    export = project / "artifacts/models/structure/model.pt"
    good = export.read_bytes()
    payload = torch.load(export, weights_only=True)
    key = next(iter(payload["state"]["encoder"]))
    payload["state"]["encoder"][key] = payload["state"]["encoder"][key] + 1e-3
    torch.save(payload, export)
    out = run(project, "finalize", "structure", check=False)
    assert out.returncode != 0 and f"encoder.{key}" in out.stderr
    (run_dir,) = (project / "artifacts/models/structure/runs").iterdir()
    assert (run_dir / "checkpoints/latest.pt").is_file()  # nothing deleted on refusal

    export.write_bytes(good)
    state_sha = hashlib.sha256((run_dir / "checkpoints/latest.pt").read_bytes()).hexdigest()
    run(project, "finalize", "structure")
    assert not (run_dir / "checkpoints").exists()
    final = json.loads((run_dir / "final.json").read_text())
    assert (final["step"], final["images_seen"]) == (6, 6 * 4)
    assert final["export_sha256"] == hashlib.sha256(good).hexdigest()
    assert final["deleted_state"] == {"latest.pt": state_sha}

    metrics = project / "reports/metrics/train_structure.json"
    metrics.unlink()
    out = run(project, "train", "structure")  # what `dvc repro` does after a code change
    assert "6 steps" in out.stdout and export.read_bytes() == good
    assert json.loads(metrics.read_text())["steps"] == 6

    set_params(project, "structure", max_steps=8)
    out = run(project, "train", "structure", check=False)
    assert out.returncode != 0 and "declared final at step 6" in out.stderr
    assert export.read_bytes() == good


def test_a_models_own_budget_overrides_its_shared_section(tmp_path, prepared):
    """`budgets.<model>` sets one texture model's steps; the others keep `texture.max_steps`."""
    project = project_with_data(tmp_path / "p", prepared, "texture", max_steps=4)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["smoke"]["budgets"] = {"variant1": 6, "full": None}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert "6 steps" in run(project, "train", "variant1").stdout
    params["profiles"]["smoke"]["budgets"] = {"variant1": None}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(project, "train", "variant1")  # back to the section's 4: the run is already past it
    assert progress(project, "variant1")["step"] == 6 and "6 steps" in out.stdout
