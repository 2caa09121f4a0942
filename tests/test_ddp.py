"""Every recipe under DistributedDataParallel: 2 gloo processes x batch b/2 against 1 process x
batch b, across the fine-tuning boundary, and a 2-process resume across it.

The models are those of the smoke profile, trained from the state of the scratch project of
tests/test_recipes.py (every model exported after one real step, so the structure and texture
stages find their upstream files), on 16 real photos with square and irregular masks. Each run
takes ``STEPS`` steps, logging every step; PConv and RFR start fine-tuning after step
``FINETUNE_FROM``, the prior regularises (R1, path length) every 2 steps and the texture models
decay their learning rate every 2 steps.

What must hold:

* every recipe trains on 2 processes across its boundary (PConv's frozen encoder batch norms
  under DDP crashed before), and both processes end with identical weights (DDP's invariant:
  the same initial broadcast and the same averaged gradients);
* a 2-process run stopped at step ``STEPS // 2`` and resumed ends with the weights of the
  uninterrupted 2-process run, bit for bit;
* for every recipe whose step draws no random numbers per process, the logged losses and the
  final weights equal the 1-process run's with the whole batch, to the tolerances below (the
  batch norms use the global batch's statistics, ``faceinpaint.training.ProcessGroupBatchNorm2d``).
  The texture models' only per-process draw is the gradient penalty's interpolation, so they are
  compared with its weight set to 0 (a setting of ``losses.texture``); the prior draws its
  latents per process (``seed + rank``), so only its two-process invariants are checked.

Tolerances (passed on 2 CPU cores at a fifth of them). Step 1, every logged term:
``STEP1_RTOL`` (float32 sums in another order). Terms normalised by a statistic of the whole
batch (the texture perceptual loss's target feature energy, ``faceinpaint.texture.perceptual_loss``;
PConv/RFR's substitute-backbone RMS, ``baselines.losses.feature_scales``) average that statistic
over the processes (``faceinpaint.training.distributed_mean``), so they too agree to rounding.
Every term at every step within ``DRIFT_RTOL``. Weights: mean absolute difference <=
``WEIGHT_MEAN_ATOL`` (Adam's first steps move each element by about ``lr * sign(gradient)``, so
near-zero gradients may flip single elements by up to ``2 lr``).

Run as a script under torchrun (``python -m torch.distributed.run --nproc-per-node=2
tests/test_ddp.py WORK OUT``), this file trains every recipe into ``OUT``; the test launches it.
Slow (two fresh processes import torch and train seven models four times): marked ``slow`` and
run by .ci/run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("stylegan", "structure", "full", "variant1", "variant2", "pconv", "rfr")
STOCHASTIC = {"stylegan"}
"""Recipes whose step draws random numbers per process (the prior's latents)."""
STEPS = 4
FINETUNE_FROM = 2
STEP1_RTOL, DRIFT_RTOL, WEIGHT_MEAN_ATOL = 5e-5, 5e-4, 5e-5


def overrides(raw: dict) -> dict:
    """The smoke profile with the boundaries inside ``STEPS`` and no gradient penalty."""
    raw = dict(raw, profile="smoke")
    smoke = raw["profiles"]["smoke"]
    smoke["pconv"]["finetune_from_step"] = smoke["rfr"]["finetune_from_step"] = FINETUNE_FROM
    smoke["stylegan"].update(d_reg_every=2, g_reg_every=2)
    smoke["texture"]["lr_decay_every"] = 2
    raw["losses"]["texture"]["gradient_penalty"] = 0.0
    return raw


def dataset(cfg):
    from faceinpaint.data import TrainingDataset, load_face

    files = sorted((ROOT / "data/celeba/train").glob("celeb_1*/*.jpg"))[:16]
    images = np.stack([load_face(f, cfg.data.crop_box, cfg.resolution) for f in files])
    res = cfg.resolution
    irregular = (np.random.default_rng(0).random((4, res, res)) < 0.2).astype(np.uint8)
    return TrainingDataset(images, irregular, seed=0, irregular_prob=0.5)


def _train(recipe, data, out_dir: Path, max_steps: int, batch_size: int):
    """:func:`faceinpaint.training.train`, returning the run (its modules as this process holds them)."""
    from faceinpaint.training import _determinism, _join_processes, _TrainingRun

    procs = _join_processes(None)
    with _determinism(True, procs.device):
        run = _TrainingRun(recipe, data, out_dir, procs, batch_size=batch_size, max_steps=max_steps, max_images=None,
                           max_minutes=None, seed=0, log_every=1, checkpoint_every=1000, checkpoint_minutes=None,
                           sample_every=1000, sample_count=0, num_workers=0, params={"model": recipe.name},
                           stage=recipe.name, curve_first=0)
        run.run()
    return run


def train_every_recipe(work: Path, out: Path, resume: bool) -> None:
    """Train each recipe ``STEPS`` steps into ``out/<model>/whole`` and, with ``resume``, to
    ``STEPS // 2`` then ``STEPS`` into ``out/<model>/resumed``; each process saves the trainable
    weights it holds after the whole run to ``out/<model>/rank<r>.pt``. Runs in ``work`` (a
    project with exported models); under torchrun the caller has joined the process group."""
    import torch.distributed as dist

    from faceinpaint.config import load_config
    from faceinpaint.models import MODELS
    from faceinpaint.recipes import make_recipe
    from faceinpaint.training import unwrap

    os.chdir(work)
    cfg = load_config("params.yaml")
    data = dataset(cfg)
    rank = dist.get_rank() if dist.is_initialized() else 0
    for name in ORDER:
        batch = getattr(cfg, MODELS[name].section).batch_size
        run = _train(make_recipe(cfg, name), data, out / name / "whole", STEPS, batch)
        held = {k: {p: t.detach().clone() for p, t in unwrap(run.modules[k]).state_dict().items()}
                for k in run.recipe.trainable}
        torch.save(held, out / name / f"rank{rank}.pt")
        if resume:
            _train(make_recipe(cfg, name), data, out / name / "resumed", STEPS // 2, batch)
            _train(make_recipe(cfg, name), data, out / name / "resumed", STEPS, batch)


def _stats(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "stats.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict:
    from faceinpaint.checkpoint import read_checkpoint

    return read_checkpoint(path / "checkpoints" / "latest.pt")["modules"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The scratch project, the 1-process runs (in this process) and the 2-process runs (torchrun)."""
    from test_recipes import one_step_each, smoke_project

    work, cfg = smoke_project(tmp_path_factory, "ddp", overrides)
    old, threads = os.getcwd(), torch.get_num_threads()
    torch.set_num_threads(1)
    os.chdir(work)
    try:
        one_step_each(cfg)
        train_every_recipe(work, work / "one", resume=False)
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    env = dict(os.environ, FACEINPAINT_MLFLOW="0", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(work), str(work / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return work


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_two_processes_train_across_the_boundary_and_hold_the_same_weights(runs, name):
    two = runs / "two" / name
    assert [r["step"] for r in _stats(two / "whole")] == list(range(1, STEPS + 1))
    if name in ("pconv", "rfr"):
        assert [r["finetune"] for r in _stats(two / "whole")] == [float(s >= FINETUNE_FROM) for s in range(STEPS)]
    r0, r1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    for module in r0:
        for key, value in r0[module].items():
            assert torch.equal(value, r1[module][key]), (name, module, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_two_process_resume_across_the_boundary_equals_the_uninterrupted_run(runs, name):
    two = runs / "two" / name
    whole, resumed = _weights(two / "whole"), _weights(two / "resumed")
    for module in whole:
        for key, value in whole[module].items():
            assert torch.equal(value, resumed[module][key]), (name, module, key)
    assert _stats(two / "resumed") == _stats(two / "whole")


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in ORDER if m not in STOCHASTIC])
def test_two_processes_of_half_the_batch_equal_one_process(runs, name):
    one, two = runs / "one" / name / "whole", runs / "two" / name / "whole"
    a, b = _stats(one), _stats(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert set(a[0]) == set(b[0])
    for term, value in a[0].items():
        if isinstance(value, float):
            assert b[0][term] == pytest.approx(value, rel=STEP1_RTOL, abs=1e-7), (name, term)
    for ra, rb in zip(a, b):
        for term, value in ra.items():
            if isinstance(value, float):
                assert rb[term] == pytest.approx(value, rel=DRIFT_RTOL, abs=1e-7), (name, ra["step"], term)
    w1, w2 = _weights(one), _weights(two)
    differences = []
    for module in w1:
        for key, value in w1[module].items():
            if value.is_floating_point():
                differences.append((w2[module][key] - value).abs().flatten())
            else:  # step counters of the batch norms
                assert torch.equal(w2[module][key], value), (name, module, key)
    assert float(torch.cat(differences).mean()) <= WEIGHT_MEAN_ATOL, name


# ------------------------------------------------------------------ device and process count


def _raw(**top) -> dict:
    return dict(yaml.safe_load((ROOT / "params.yaml").read_text()), **top)


def test_device_is_checked_at_load(tmp_path):
    from faceinpaint.config import ConfigError, load_config

    path = tmp_path / "params.yaml"
    for bad in ("gpu", "cuda:", "cpu:0", "cuda:x"):
        path.write_text(yaml.safe_dump(_raw(device=bad)))
        with pytest.raises(ConfigError, match=r"device must be 'cpu', 'cuda' or 'cuda:N'"):
            load_config(path)
    path.write_text(yaml.safe_dump(_raw(device="cuda:0")))
    if torch.cuda.is_available():
        assert load_config(path).device == "cuda:0"
    else:
        with pytest.raises(ConfigError, match=r"device 'cuda:0' asked for, but torch sees no CUDA device"):
            load_config(path)
    assert load_config(ROOT / "params.yaml").device == "cpu"


def test_every_torch_command_takes_the_device_from_params_or_refuses_a_bad_one(tmp_path):
    from click.testing import CliRunner

    from faceinpaint.cli import cli

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    runner = CliRunner()
    for args in (["train", "pconv"], ["evaluate", "pconv"], ["test-features"], ["identity-auc"],
                 ["inpaint", "a.png", "m.png", "-o", str(tmp_path / "o.png")]):
        done = runner.invoke(cli, [*args, "--device", "cuda"])
        assert done.exit_code != 0 and "--device: device 'cuda' asked for, but torch sees no CUDA device" in done.output, args
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_raw(device="cuda")))
    done = runner.invoke(cli, ["evaluate", "pconv", "--params", str(path)])
    assert done.exit_code != 0 and "device 'cuda' asked for" in done.output


def test_batches_are_per_process_and_the_stddev_group_keeps_its_size():
    """A per-process batch is what a process computes on any process count; the prior's
    minibatch-stddev group (4) must fit it whole when several processes train."""
    from faceinpaint.config import ConfigError, STDDEV_GROUP, check_batches, parse_params
    from faceinpaint.stylegan2 import Discriminator

    assert Discriminator(32, 1, 32).stddev_group == STDDEV_GROUP
    cfg = parse_params(_raw(profile="paper"))
    for world in (1, 2, 4, 8):
        check_batches(cfg.params, world)  # every section of the paper profile on 1..8 processes
    raw = _raw(nproc=8)
    raw["profiles"]["cpu"]["stylegan"]["batch_size"] = 2
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.stylegan\.batch_size is 2 images per process on 8 process"):
        parse_params(raw)
    raw["nproc"] = 1
    parse_params(raw)  # one process: a group of 2 (min(batch, 4)), as before
    raw["profiles"]["cpu"]["stylegan"]["batch_size"] = 6
    with pytest.raises(ConfigError, match="multiple or a divisor of 4"):
        parse_params(raw)


def test_pconv_fine_tuning_freezes_the_encoder_norms_with_or_without_requires_grad():
    """The two ways of freezing (requires_grad off in one process; kept on under DDP, gradients
    dropped before the step) leave the frozen parameters unchanged and the rest identical."""
    from baselines.pconv import PConvInpainter

    torch.manual_seed(0)
    nets = [PConvInpainter(32, 8).train(), None]
    nets[1] = __import__("copy").deepcopy(nets[0])
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mask = (torch.rand(2, 1, 32, 32, generator=g) < 0.3).float()
    after = []
    for net, keep in zip(nets, (False, True)):
        net.set_finetune(True, keep_requires_grad=keep)
        assert all(p.requires_grad == keep for p in net.frozen_parameters())
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        frozen_before = [p.detach().clone() for p in net.frozen_parameters()]
        net(image * (1 - mask), mask)["output"].square().mean().backward()
        for p in net.frozen_parameters():
            p.grad = None
        opt.step()
        assert all(torch.equal(a, p) for a, p in zip(frozen_before, net.frozen_parameters()))
        after.append(net.state_dict())
    for key, value in after[0].items():
        assert torch.equal(value, after[1][key]), key
    nets[0].set_finetune(False)
    assert nets[0].frozen_parameters() == []


if __name__ == "__main__":  # a worker of the 2-process run (torchrun sets RANK, WORLD_SIZE, ...)
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "tests"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        train_every_recipe(Path(sys.argv[1]), Path(sys.argv[2]), resume=True)
    finally:
        dist.destroy_process_group()
