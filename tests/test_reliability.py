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
        run(project, "evaluate", "pconv")
        results.append(((project / "reports/metrics/eval_pconv.json").read_bytes(), model_state(project)))
    assert results[0][0] == results[1][0]  # the metrics file, byte for byte
    assert same_state(results[0][1], results[1][1])
    assert json.loads(results[0][0])["psnr"] > 0


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, prepared):
    budget = dict(max_steps=60, checkpoint_every=5, log_every=5, sample_every=1000)
    reference = project_with_data(tmp_path / "reference", prepared, **budget)
    run(reference, "train", "pconv")

    crashed = project_with_data(tmp_path / "crashed", prepared, **budget)
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*CLI, "train", "pconv"], cwd=crashed, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            progress = list((crashed / "artifacts/models/pconv/runs").glob("*/checkpoints/previous.pt"))
            if progress:  # at least two checkpoints written: kill somewhere in the middle
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for this budget)")
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed / "artifacts/models/pconv/model.pt").exists()

    out = run(crashed, "train", "pconv")
    assert "60 steps" in out.stdout
    assert same_state(model_state(crashed), model_state(reference))
    ref_stats = next((reference / "artifacts/models/pconv/runs").glob("*/stats.jsonl")).read_text()
    got_stats = next((crashed / "artifacts/models/pconv/runs").glob("*/stats.jsonl")).read_text()
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
    to_unit = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # noqa: E731
    train = np.load(prepared / "train_images.npy")
    test = to_unit(np.load(prepared / "test_images.npy"))
    squares = torch.from_numpy(square_masks(cfg.resolution, cfg.masks.square_min_frac, cfg.masks.square_max_frac))
    mask = squares[torch.arange(len(test)) % len(squares)][:, None].float()  # test image i: square i mod 10
    with torch.no_grad():
        composite = load_inpainter(cfg, "structure")(test * (1 - mask), mask)["composite"]
    mean_colour = torch.tensor(train.reshape(-1, 3).mean(0) / 127.5 - 1, dtype=torch.float32).view(1, 3, 1, 1)
    mean_fill = test * (1 - mask) + mean_colour * mask
    hole_l1 = lambda x: ((x - test).abs() * mask).sum() / (mask.sum() * 3)  # noqa: E731
    assert torch.equal(composite * (1 - mask), test * (1 - mask))  # known pixels untouched
    assert hole_l1(composite) < hole_l1(mean_fill), (float(hole_l1(composite)), float(hole_l1(mean_fill)))
