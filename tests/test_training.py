"""The training loop, its checkpoints and MLflow tracking (faceinpaint.training / .checkpoint / .tracking).

The loop is exercised on a small real inpainting task: the first 48 aligned CelebA training
photos at 32x32 with random square holes (``faceinpaint.data.TrainingDataset``) and a few
convolutions trained with hole/valid L1 (PConv's L1 terms), with dropout so that resuming must
restore the random state too. Reference: an uninterrupted 20-step run; every interrupted,
killed or extended run must end with the identical checkpoint (weights, EMA, optimiser,
scheduler, RNG, data position) and identical ``stats.jsonl``.

Run as a script (``python tests/test_training.py OUT_DIR --steps N [--pause S] ...``) this file
trains the same fixture; the tests use it for killed subprocesses and for torchrun (DDP).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from faceinpaint import checkpoint as ckpt
from faceinpaint import tracking
from faceinpaint.config import load_config
from faceinpaint.data import TrainingDataset, load_face, to_tensor_image
from faceinpaint.training import (EmaSpec, NonFiniteLossError, Recipe, TrainingInterrupted, make_ema, train,
                                  update_ema)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PHOTOS = ROOT / "data" / "celeba" / "train"
CROP_BOX = load_config(ROOT / "params.yaml").data.crop_box  # the face square of an aligned CelebA photo
STEPS = 20


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in the subprocesses (OMP_NUM_THREADS=1): bit-for-bit
    comparisons need the same thread count in both, and on a busy 2-core machine two threads
    run these small convolutions many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def face_images(n: int = 48, resolution: int = 32) -> np.ndarray:
    files = sorted(TRAIN_PHOTOS.rglob("*.jpg"))[:n]
    if len(files) < n:
        pytest.skip("data/celeba not pulled (run `dvc pull`)")
    return np.stack([load_face(p, CROP_BOX, resolution) for p in files])


def face_dataset() -> TrainingDataset:
    return TrainingDataset(face_images(), None, seed=0)


class MaskedL1Inpainter(Recipe):
    """Three convolutions filling square holes, trained with 6 x hole L1 + valid L1.

    Fault injection for the tests: ``nan_at_step`` feeds a NaN-corrupted batch at that step,
    ``signal_at_step`` sends this process SIGINT during that step, ``pause_s`` slows each step
    so a test can kill the process part-way.
    """

    name = "test-inpainter"
    trainable = ("net",)
    ema = MappingProxyType({"net_ema": EmaSpec("net", half_life_images=100.0)})

    def __init__(self, dropout: float = 0.1, nan_at_step: int | None = None, signal_at_step: int | None = None,
                 pause_s: float = 0.0):
        self.dropout, self.nan_at_step, self.signal_at_step, self.pause_s = dropout, nan_at_step, signal_at_step, pause_s

    def build(self, device):
        net = nn.Sequential(
            nn.Conv2d(4, 16, 3, padding=1), nn.LeakyReLU(0.2), nn.Dropout2d(self.dropout),
            nn.Conv2d(16, 16, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 3, 3, padding=1), nn.Tanh(),
        )
        return {"net": net.to(device)}

    def optimizers(self, modules):
        return {"net": torch.optim.Adam(modules["net"].parameters(), lr=2e-3)}

    def schedulers(self, optimizers):
        return {"net": torch.optim.lr_scheduler.StepLR(optimizers["net"], step_size=7, gamma=0.5)}

    def train_step(self, modules, optimizers, batch, step):
        if self.pause_s:
            time.sleep(self.pause_s)
        if step == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGINT)
        image, mask = batch["image"], batch["mask"]
        if step == self.nan_at_step:
            image = image * float("nan")
        net = modules["net"]
        net.train()
        error = (net(torch.cat([image * (1 - mask), mask], 1)) - image).abs()
        l1_hole, l1_valid = (error * mask).mean(), (error * (1 - mask)).mean()
        loss = 6.0 * l1_hole + l1_valid
        optimizers["net"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["net"].step()
        return {"l1_hole": l1_hole.detach(), "l1_valid": l1_valid.detach(), "loss": loss.detach()}

    def sample(self, modules, batch):
        image, mask = batch["image"], batch["mask"]
        damaged = image * (1 - mask)
        output = modules["net_ema"](torch.cat([damaged, mask], 1))
        return [damaged, mask * output + (1 - mask) * image, image]


def run_fixture(out_dir: Path, steps: int = STEPS, recipe: MaskedL1Inpainter | None = None, **overrides):
    recipe = recipe or MaskedL1Inpainter()
    kwargs = dict(batch_size=8, max_steps=steps, log_every=3, checkpoint_every=5, checkpoint_minutes=None,
                  sample_every=10, sample_count=4, seed=0, device="cpu", params={"dropout": recipe.dropout, "lr": 2e-3})
    kwargs.update(overrides)
    return train(recipe, face_dataset(), out_dir, **kwargs)


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Nested equality, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{where}: {a!r} != {b!r}"


def assert_same_run(reference: Path, other: Path) -> None:
    a = ckpt.read_checkpoint(reference / "checkpoints" / "latest.pt")
    b = ckpt.read_checkpoint(other / "checkpoints" / "latest.pt")
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert_identical(a, b)
    assert (other / "stats.jsonl").read_text() == (reference / "stats.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = run_fixture(out)
    assert result.step == STEPS and result.stopped_by == "max_steps" and result.resumed_from_step == 0
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training process ended early (rc {proc.returncode})"
        assert time.monotonic() < deadline, "timed out waiting for the training process"
        time.sleep(0.01)


def spawn_fixture(out: Path, log: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, __file__, str(out), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


# ---------------------------------------------------------------------------- checkpoints


def small_state(value: float) -> dict:
    return {"weights": torch.arange(1000, dtype=torch.float32) + value, "step": int(value), "note": "x"}


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, small_state(1.0))
    real_save = torch.save

    def save_half_then_crash(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(tmp_path, small_state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == "latest.pt" and state["step"] == 1
    assert torch.equal(state["weights"], small_state(1.0)["weights"])

    # a process killed between the two renames leaves only previous.pt: still resumable
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, small_state(2.0))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "latest.pt").exists()
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == "previous.pt" and state["step"] == 1

    # the next save succeeds and clears temporary files left by killed writers
    (tmp_path / ".latest.pt.99999.tmp").write_bytes(b"partial")
    ckpt.save_checkpoint(tmp_path, small_state(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "previous.pt"]
    assert ckpt.load_latest(tmp_path)[0]["step"] == 3


def test_corrupt_checkpoint_is_named_and_previous_is_used(tmp_path, caplog):
    ckpt.save_checkpoint(tmp_path, small_state(1.0))
    ckpt.save_checkpoint(tmp_path, small_state(2.0))
    latest = tmp_path / "latest.pt"
    raw = bytearray(latest.read_bytes())
    at = raw.find((torch.arange(1000, dtype=torch.float32) + 2.0).numpy().tobytes()[:400])
    assert at > 0
    raw[at + 123] ^= 0x01  # one flipped bit inside the tensor data: torch.load alone accepts it
    latest.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match=r"latest\.pt.*corrupt"):
        ckpt.read_checkpoint(latest)
    with caplog.at_level(logging.WARNING, logger="faceinpaint.checkpoint"):
        state, path = ckpt.load_latest(tmp_path)
    assert path.name == "previous.pt" and state["step"] == 1
    assert "latest.pt" in caplog.text

    previous = tmp_path / "previous.pt"
    previous.write_bytes(previous.read_bytes()[:300])  # truncated
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_latest(tmp_path)
    assert "latest.pt" in str(err.value) and "previous.pt" in str(err.value)
    assert ckpt.load_latest(tmp_path / "empty") is None


def test_rng_state_round_trip():
    import random

    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    ckpt.restore_rng_state(state)
    again = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])


# -------------------------------------------------------------------------------------- EMA


def test_ema_matches_formula_and_half_life():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = make_ema(net)
    assert not any(p.requires_grad for p in ema.parameters())
    before = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net(torch.randn(5, 3))  # moves the batch-norm running statistics
    update_ema(ema, net, 0.9)
    for old, new, src in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src, rtol=0, atol=1e-6)
    assert torch.equal(ema[1].running_mean, net[1].running_mean)

    spec = EmaSpec("G", half_life_images=10_000.0)
    assert spec.decay(16, 0) ** (10_000 / 16) == pytest.approx(0.5)
    ramped = EmaSpec("G", half_life_images=10_000.0, rampup_ratio=0.05)
    assert ramped.decay(16, 1000) == pytest.approx(0.5 ** (16 / 50))


# --------------------------------------------------------------------------------- the loop


def test_same_seed_gives_identical_runs(reference, tmp_path):
    again = run_fixture(tmp_path)
    assert_same_run(reference, tmp_path)
    lines = [json.loads(line) for line in (reference / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6, 9, 12, 15, 18, 20]
    assert lines[-1]["end_of_run"] and lines[-1]["images_seen"] == STEPS * 8
    assert again.losses == {k: lines[-1][k] for k in ("l1_hole", "l1_valid", "loss")}
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    assert lines[0]["lr/net"] == 2e-3 and lines[-1]["lr/net"] == 2e-3 * 0.5 ** 2  # StepLR(7, 0.5) after 20 steps


def test_sample_grid_shows_the_dataset_images(reference):
    grid = np.asarray(Image.open(reference / "samples" / "step_0000020.png"))
    assert grid.shape == (2 + 4 * 34, 2 + 3 * 34, 3)  # 4 examples x (damaged, composite, original), 2 px padding
    dataset = face_dataset()
    for i in range(4):
        original = grid[2 + 34 * i: 34 + 34 * i, 2 + 68: 34 + 68]
        expected = dataset[i]["image"].add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(original, expected)
        composite = grid[2 + 34 * i: 34 + 34 * i, 2 + 34: 34 + 34]
        known = dataset[i]["mask"][0].numpy() == 0
        assert np.array_equal(composite[known], expected[known])  # outside the hole: the original, bit for bit


def test_longer_budget_continues_the_run(reference, tmp_path):
    first = run_fixture(tmp_path, steps=10)
    assert first.step == 10 and first.resumed_from_step == 0
    second = run_fixture(tmp_path, steps=STEPS)
    assert second.resumed_from_step == 10 and second.step == STEPS and second.images_seen == STEPS * 8
    assert_same_run(reference, tmp_path)
    third = run_fixture(tmp_path, steps=STEPS)  # budget already met: nothing happens
    assert third.resumed_from_step == STEPS and third.step == STEPS
    assert_same_run(reference, tmp_path)


def test_dataloader_workers_do_not_change_the_run(reference, tmp_path):
    run_fixture(tmp_path, num_workers=2)
    assert_same_run(reference, tmp_path)


def test_resume_refuses_other_params_but_not_another_budget(tmp_path):
    params = {"dropout": 0.1, "lr": 2e-3, "model.max_steps": 5, "model.log_every": 3}
    run_fixture(tmp_path, steps=5, params=params)
    with pytest.raises(ckpt.CheckpointError, match=r"other params \(lr: 0\.002 -> 0\.001\)"):
        run_fixture(tmp_path, steps=10, params={**params, "lr": 1e-3})
    longer = {**params, "model.max_steps": 10, "model.log_every": 2}
    assert run_fixture(tmp_path, steps=10, params=longer).resumed_from_step == 5


def test_nan_loss_stops_naming_model_step_and_term(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        run_fixture(tmp_path, recipe=MaskedL1Inpainter(nan_at_step=7))
    message = str(err.value)
    assert "'test-inpainter'" in message and "step 8" in message and "l1_hole=nan" in message
    assert "latest.pt (step 5)" in message
    state, path = ckpt.load_latest(tmp_path / "checkpoints")
    assert path.name == "latest.pt" and state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["modules"]["net"].values())


def test_sigint_checkpoints_after_the_step_and_resumes_exactly(reference, tmp_path):
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as err:
        run_fixture(tmp_path, recipe=MaskedL1Inpainter(signal_at_step=7))
    assert err.value.code == 130 and "SIGINT after step 8" in str(err.value)
    assert ckpt.load_latest(tmp_path / "checkpoints")[0]["step"] == 8
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert run_fixture(tmp_path).resumed_from_step == 8
    assert_same_run(reference, tmp_path)


@pytest.mark.slow  # starts fresh Python processes: torch (and mlflow) imports take 10-20 s each here
def test_kill_9_then_rerun_equals_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    proc = spawn_fixture(out, tmp_path / "log.txt", "--steps", str(STEPS), "--pause", "0.1")
    try:
        wait_for(lambda: (out / "checkpoints" / "previous.pt").exists(), proc)  # two checkpoints written
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
    killed_at = ckpt.load_latest(out / "checkpoints")[0]["step"]
    assert 10 <= killed_at < STEPS
    result = run_fixture(out)
    assert result.resumed_from_step == killed_at and result.step == STEPS
    assert_same_run(reference, out)


@pytest.mark.slow  # starts fresh Python processes: torch (and mlflow) imports take 10-20 s each here
def test_sigterm_writes_checkpoint_and_exits_143(reference, tmp_path):
    out = tmp_path / "run"
    log_file = tmp_path / "log.txt"
    proc = spawn_fixture(out, log_file, "--steps", str(STEPS), "--pause", "0.1")
    try:
        wait_for(lambda: (out / "checkpoints" / "latest.pt").exists(), proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = log_file.read_text()
    assert rc == 143, stderr
    step = ckpt.load_latest(out / "checkpoints")[0]["step"]
    assert 5 <= step < STEPS
    assert f"stopped by SIGTERM after step {step}" in stderr and "checkpoint written" in stderr
    assert run_fixture(out).resumed_from_step == step
    assert_same_run(reference, out)


@pytest.mark.slow  # starts fresh Python processes: torch (and mlflow) imports take 10-20 s each here
def test_two_processes_reproduce_one_process_loss_curve(tmp_path):
    """torchrun, 2 gloo processes x 4 images vs 1 process x 8 images: same global batches."""
    steps = 8
    single = tmp_path / "single"
    run_fixture(single, steps=steps, recipe=MaskedL1Inpainter(dropout=0.0), log_every=1,
                params={"dropout": 0.0, "lr": 2e-3})
    double = tmp_path / "double"
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, str(double),
           "--steps", str(steps), "--dropout", "0", "--log-every", "1"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((double / "progress.json").read_text())["world_size"] == 2
    one = [json.loads(line) for line in (single / "stats.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (double / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, steps + 1))
    for a, b in zip(one, two):
        for term in ("loss", "l1_hole", "l1_valid"):
            assert b[term] == pytest.approx(a[term], rel=1e-5), (a["step"], term)
    w1 = ckpt.read_checkpoint(single / "checkpoints" / "latest.pt")["modules"]["net"]
    w2 = ckpt.read_checkpoint(double / "checkpoints" / "latest.pt")["modules"]["net"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- MLflow


def test_tracking_off_and_file_store_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEINPAINT_MLFLOW", "0")
    with tracking.start_run("stage", "model", {"a": 1}) as run_id:
        tracking.log_metrics({"x": 1.0}, step=1)
    assert run_id is None and list(tmp_path.iterdir()) == []
    for uri in ("file:///tmp/mlruns", str(tmp_path / "mlruns")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(tracking.TrackingError, match="file store"):
            tracking.tracking_uri()


@pytest.mark.slow  # starts fresh Python processes: torch (and mlflow) imports take 10-20 s each here
def test_mlflow_records_params_metrics_tags_under_one_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("FACEINPAINT_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FACEINPAINT_PIPELINE_RUN", "pipeline-test")
    for name in ("FACEINPAINT_PARENT_RUN_ID", "DVC_EXP_NAME", "DVC_STAGE", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    run_fixture(tmp_path / "run", steps=6, stage="train-test", params={"dropout": 0.1, "lr": 2e-3, "profile": "smoke"})
    with tracking.start_run("second-stage", "other-model", {"profile": "smoke"}):
        tracking.log_metrics({"x": 1.0}, step=0)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = {r.data.tags.get("mlflow.runName"): r for r in client.search_runs([experiment.experiment_id])}
    parent_id = dict(line.split("=", 1) for line in (tmp_path / tracking.PARENT_RUN_FILE).read_text().splitlines())["run_id"]
    child, second = runs["train-test"], runs["second-stage"]
    assert child.data.tags["mlflow.parentRunId"] == parent_id == second.data.tags["mlflow.parentRunId"]
    assert runs["pipeline pipeline-test"].info.run_id == parent_id
    assert child.data.params["lr"] == "0.002" and child.data.params["batch_size"] == "8"
    tags = child.data.tags
    assert (tags["model"], tags["stage"], tags["profile"], tags["pipeline_run"]) == ("test-inpainter", "train-test", "smoke", "pipeline-test")
    assert tags["git_commit"]
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    history = client.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in stats]
    assert child.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(child.info.run_id, "samples")] == ["samples/step_0000006.png"]


# --------------------------------------------------------------------------- script entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the test fixture (used by tests/test_training.py).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of sleep per step")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    recipe = MaskedL1Inpainter(dropout=args.dropout, pause_s=args.pause)
    run_fixture(args.out_dir, args.steps, recipe=recipe, log_every=args.log_every,
                params={"dropout": args.dropout, "lr": 2e-3})


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------- learning curves


class CurvedInpainter(MaskedL1Inpainter):
    """The fixture with a learning curve: hole L1 of ``net_ema`` on fixed held-out faces, plus a
    draw from every random generator (which the loop must not let disturb training)."""

    def curve_point(self, modules):
        torch.rand(3), np.random.rand(), __import__("random").random()
        images = to_tensor_image(face_images()[-8:])
        mask = torch.zeros_like(images[:, :1])
        mask[..., 8:24, 8:24] = 1
        out = modules["net_ema"](torch.cat([images * (1 - mask), mask], 1))
        return {"hole_l1": float(((out - images).abs() * mask).sum() / (mask.sum() * 3))}


def curve_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "curve.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "curve_s"} for line in lines]


def test_curve_budgets_double_from_the_first():
    from faceinpaint.training import curve_budgets

    assert curve_budgets(2000, 20000) == [2000, 4000, 8000, 16000]
    assert curve_budgets(0, 10**6) == []


def test_curve_points_leave_training_unchanged_and_land_at_each_doubling(reference, tmp_path):
    run_fixture(tmp_path, recipe=CurvedInpainter(), curve_first=16)
    a = ckpt.read_checkpoint(reference / "checkpoints" / "latest.pt")
    b = ckpt.read_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert_identical(a, b)  # the curve's random draws and eval passes did not touch training
    records = curve_records(tmp_path)
    assert [(r["step"], r["images_seen"]) for r in records] == [(2, 16), (4, 32), (8, 64), (16, 128)]
    # a point on the last step holds the value of the saved EMA weights, computed afresh
    run_fixture(tmp_path / "longer", steps=32, recipe=CurvedInpainter(), curve_first=256)
    with torch.no_grad():
        expected = CurvedInpainter().curve_point({"net_ema": _ema_of(tmp_path / "longer")})["hole_l1"]
    assert curve_records(tmp_path / "longer") == [{"step": 32, "images_seen": 256, "hole_l1": expected}]


def _ema_of(run_dir: Path) -> nn.Module:
    state = ckpt.read_checkpoint(run_dir / "checkpoints" / "latest.pt")
    net = make_ema(MaskedL1Inpainter().build(torch.device("cpu"))["net"])
    net.load_state_dict(state["modules"]["net_ema"])
    return net


def test_extended_run_has_the_curve_of_an_uninterrupted_one(tmp_path):
    run_fixture(tmp_path / "whole", recipe=CurvedInpainter(), curve_first=16)
    run_fixture(tmp_path / "grown", steps=7, recipe=CurvedInpainter(), curve_first=16)
    run_fixture(tmp_path / "grown", recipe=CurvedInpainter(), curve_first=16)
    assert curve_records(tmp_path / "grown") == curve_records(tmp_path / "whole")


def test_log_line_shows_progress_against_the_budget_and_an_eta(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="faceinpaint.training"):
        run_fixture(tmp_path, steps=6)
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage() and "img/s" in r.getMessage()]
    assert lines and all("/6 |" in line and "ETA " in line for line in lines)
    assert lines[-1].split("ETA ")[1].startswith("0:00:00")  # nothing left at the last step


def test_a_stopped_run_whose_budget_is_set_to_its_step_records_its_progress(tmp_path):
    with pytest.raises(TrainingInterrupted):
        run_fixture(tmp_path, recipe=MaskedL1Inpainter(signal_at_step=7))
    assert not (tmp_path / "progress.json").exists()
    result = run_fixture(tmp_path, steps=8)  # the budget set to the step the signal stopped it at
    assert result.step == 8 and result.stopped_by == "max_steps" and result.resumed_from_step == 8
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 8
