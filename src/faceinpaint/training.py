"""The one training loop of the suite; every model plugs in through a small :class:`Recipe`.

A recipe says what to build (networks), how to optimise it (optimisers, schedulers, EMA copies)
and what one training step is (its own forward/backward/optimiser steps, since GANs alternate
updates). :func:`train` owns everything else:

* data: an endless stream over a torch ``Dataset`` (dicts of tensors, see ``faceinpaint.data``),
  reshuffled every epoch from ``(seed, epoch)``, sharded across processes under DDP, and able to
  restart at any batch of an epoch, so a resumed run sees exactly the batches an uninterrupted
  one would. A dataset with a ``set_epoch(epoch)`` method is told the epoch (for per-epoch
  augmentation seeds);
* budget: ``max_steps`` / ``max_images`` / ``max_minutes``, whichever is reached first; all three
  count the whole run across resumptions (PAPER.md sec. 9: a longer budget continues the run);
* logging: every ``log_every`` steps the window means of every loss go to ``stats.jsonl``
  (deterministic: same seed, same bytes) and MLflow; speed and memory go to ``timing.jsonl``;
  sample grids every ``sample_every`` steps to ``samples/`` and MLflow;
* checkpoints (``faceinpaint.checkpoint``): every ``checkpoint_every`` steps and
  ``checkpoint_minutes`` minutes, on SIGTERM/SIGINT (then exit 143/130), and at the end;
  re-running with the same ``out_dir`` resumes from the newest one, bit for bit on CPU;
* a non-finite loss stops training with :class:`NonFiniteLossError` naming the model, step and
  loss term; the state is not saved, so the last good checkpoint stays the newest;
* several processes: under ``torchrun`` (``WORLD_SIZE`` > 1) the loop joins the process group
  (gloo on CPU, nccl on CUDA), wraps the recipe's trainable modules in
  ``DistributedDataParallel``, gives each process ``batch_size / world_size`` images of every
  global batch, and lets only rank 0 write files and MLflow. For example::

      torchrun --standalone --nproc-per-node=2 --no-python faceinpaint train pconv   # 2 CPU processes
      torchrun --standalone --nproc-per-node=8 --no-python faceinpaint train full    # one 8-GPU node

  Two processes reproduce the loss curve of one with the same global batch (tests/test_training.py).
  The trainable modules' batch norms normalise with the global batch's statistics
  (``SyncBatchNorm`` on CUDA, :class:`ProcessGroupBatchNorm2d` on the CPU), and
  ``batch_size`` here is the global batch (``faceinpaint.stages`` passes per-process batch x
  processes).

Layout of ``out_dir``: ``checkpoints/{latest,previous}.pt``, ``stats.jsonl``, ``timing.jsonl``,
``samples/step_NNNNNNN.png``, ``progress.json`` (how far the run got; :class:`TrainResult`).

Step numbering: ``train_step`` receives ``step`` = the number of steps completed before it
(0 for the first); ``stats.jsonl``, checkpoints and error messages count completed steps, so
the step that ``train_step(step=7)`` performs is "step 8".
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import resource
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from . import tracking
from .checkpoint import CheckpointError, capture_rng_state, load_latest, restore_rng_state, save_checkpoint

log = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"
TIMING_FILE = "timing.jsonl"
PROGRESS_FILE = "progress.json"
CURVE_FILE = "curve.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
_RESERVED_STATS_KEYS = {"step", "images_seen", "epoch", "end_of_run"}


# ------------------------------------------------------------------------------------ recipe


@dataclasses.dataclass(frozen=True)
class EmaSpec:
    """An exponential moving average of a trainable module's weights.

    ``half_life_images``: images after which an old weight's share has halved (StyleGAN's
    ``ema_kimg`` x 1000). ``rampup_ratio``: if set, the half-life is at most
    ``rampup_ratio * images_seen``, so early averages forget the random init quickly (EDM).
    """

    source: str
    half_life_images: float
    rampup_ratio: float | None = None

    def decay(self, batch_images: int, images_seen: int) -> float:
        half_life = self.half_life_images
        if self.rampup_ratio is not None:
            half_life = min(half_life, images_seen * self.rampup_ratio)
        return 0.5 ** (batch_images / max(half_life, 1e-8))


class Recipe(ABC):
    """What one model gives the training loop. Subclass it next to the model.

    Class attributes:

    * ``name`` (str): the model's name in logs, errors, checkpoints and MLflow tags.
    * ``trainable`` (tuple of str): keys of :meth:`build`'s dict whose modules are optimised.
      These are checkpointed and, under DDP, wrapped in ``DistributedDataParallel``. Other
      modules (frozen pretrained networks) are rebuilt by :meth:`build` and never saved.
    * ``ema`` (mapping ``ema_name -> EmaSpec``): moving averages the loop keeps of trainable
      modules; it creates them (a copy of the source after :meth:`build`), updates them after
      every step, checkpoints them, and passes them in ``modules[ema_name]``.
    * ``double_backward`` (tuple of str): trainable modules a loss differentiates twice through
      (gradient penalties); ``runtime.compile`` leaves them eager.

    The loop never calls ``.train()`` / ``.eval()``; the recipe sets the modes it needs.
    """

    name: str
    trainable: tuple[str, ...]
    ema: Mapping[str, EmaSpec] = MappingProxyType({})
    double_backward: tuple[str, ...] = ()

    @abstractmethod
    def build(self, device: torch.device) -> dict[str, nn.Module]:
        """Create every module on ``device`` (the loop has seeded all RNGs before the call)."""

    @abstractmethod
    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Optimisers over the (unwrapped) modules, keyed by name."""

    def schedulers(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Learning-rate schedulers; the loop calls ``.step()`` on each once after every training step."""
        return {}

    @abstractmethod
    def train_step(self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                   batch: Mapping[str, Any], step: int) -> Mapping[str, float | torch.Tensor]:
        """One optimisation step on ``batch`` (the dataset's dict, collated, tensors on the device).

        Does its own ``zero_grad`` / ``backward`` / ``optimizer.step()``; returns scalar losses to
        log, keyed by term. ``step`` counts the steps completed before this one. Under DDP,
        ``modules[k]`` of trainable modules is the DDP wrapper: a backward through it averages
        gradients over processes; use :func:`unwrap` for passes that must not synchronise (e.g.
        the discriminator inside a generator step). The set of returned keys may depend on
        ``step`` but must be the same on every process.
        """

    def sample(self, modules: Mapping[str, nn.Module], batch: Mapping[str, Any]) -> torch.Tensor | Sequence[torch.Tensor] | None:
        """Images for a sample grid, in [-1, 1]: one ``N x 3 x H x W`` tensor, or a sequence of
        them (panels, e.g. damaged / output / original; one grid row per example). Runs under
        ``no_grad`` on rank 0 only, with unwrapped modules; its use of random numbers does not
        disturb training. ``None`` (the default) means no samples."""
        return None

    def curve_point(self, modules: Mapping[str, nn.Module]) -> Mapping[str, float] | None:
        """Quality of the model now, on a fixed held-out set, for its learning curve: called when
        the images shown first reach each budget of :func:`curve_budgets` (rank 0, ``no_grad``,
        unwrapped modules, random state preserved, so it does not change training). ``None``
        (the default) means no curve."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Recipe state outside modules and optimisers (e.g. a running path-length mean)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise CheckpointError(f"recipe {self.name!r} keeps no state but the checkpoint has {sorted(state)}")


# ------------------------------------------------------------------------------ EMA helpers


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to hold its moving average."""
    ema = copy.deepcopy(unwrap(module)).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, source: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * source`` for parameters; buffers (e.g. batch-norm
    statistics) are copied, since averaging running statistics has no meaning. One foreach
    ``lerp_`` over all parameters and one foreach ``copy_`` over all buffers (a few kernel
    launches on a GPU instead of one per tensor; on the CPU the same per-tensor arithmetic, bit
    for bit, tests/test_fastpath.py)."""
    source = unwrap(source)
    ema_params, params = list(ema.parameters()), [p.detach() for p in source.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, its source {len(params)}")
    if ema_params:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    ema_buffers, buffers = list(ema.buffers()), list(source.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError(f"EMA has {len(ema_buffers)} buffers, its source {len(buffers)}")
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)


# ------------------------------------------------------------------------------- fast paths


def _runtime_value(runtime: Any, key: str, default: Any) -> Any:
    return default if runtime is None else getattr(runtime, key)


def apply_runtime(modules: dict[str, nn.Module], names: Sequence[str], runtime: Any, ema_names: Sequence[str] = (),
                  eager: Sequence[str] = ()) -> None:
    """Put the modules ``names`` (and their EMA copies ``ema_names``, so that the EMA's foreach
    update sees one layout) in channels-last memory format and compile the forward of ``names``
    (``nn.Module.compile``: in place, so state-dict keys, attributes and DDP wrapping are those
    of the eager module), as ``runtime`` says; nothing when its fast paths are off. Modules in
    ``eager`` (a recipe's ``double_backward``: ``torch.compile`` does not support a backward
    through a backward, which R1, the path-length and the WGAN gradient penalties take) stay
    uncompiled, and the log says so."""
    channels_last = _runtime_value(runtime, "channels_last", False)
    mode = _runtime_value(runtime, "compile", "off")
    for name in (*names, *ema_names) if channels_last else ():
        for tensor in (*modules[name].parameters(), *modules[name].buffers()):
            if tensor.ndim == 4:  # 4-D only (``Module.to`` refuses StyleGAN2's 5-D modulated weights)
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    for name in names if mode != "off" else ():
        if name in eager:
            log.info("compile %s: %s stays eager (its loss takes a double backward, which torch.compile does not support)",
                     mode, name)
            continue
        modules[name].compile(mode=mode)


def step_context(runtime: Any, device: torch.device):
    """The context of one training step: bf16 autocast on ``device`` for ``precision: bf16``
    (weights, gradients and optimiser states stay fp32; the recipes' backward passes run inside
    it on the dtypes autocast chose forward), else nothing."""
    if _runtime_value(runtime, "precision", "fp32") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(batch: Any) -> Any:
    """4-D tensors of a batch (images, masks) in channels-last memory format; others unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, Mapping):
        return {k: to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch


# ---------------------------------------------------------------------- distributed helpers


class ProcessGroupBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the global batch over every
    process of the group (``nn.SyncBatchNorm`` for the CPU, which it does not support; gloo).

    Sums and sums of squares per channel and the element count are all-reduced with autograd
    (``torch.distributed.nn.functional.all_reduce``), so the gradient is that of one process
    normalising the whole batch. The variance is ``E[x^2] - E[x]^2`` (one fp64 reduction), which
    differs from a one-process ``BatchNorm2d`` by rounding only. The running statistics get the
    global mean and unbiased variance, so every process holds the same ones. Outside training
    mode, or in one process, it is ``BatchNorm2d``."""

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every plain ``BatchNorm2d`` replaced by this class (same state)."""
        if type(module) is nn.BatchNorm2d:
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      device=module.weight.device if module.affine else None)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            if module.affine:
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            return new
        for name, child in module.named_children():
            setattr(module, name, cls.convert(child))
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x64 = x.double()
        local = torch.cat([x64.sum((0, 2, 3)), x64.square().sum((0, 2, 3)),
                           x64.new_tensor([x.numel() // x.shape[1]])])
        total = all_reduce(local)
        c = self.num_features
        count = total[2 * c]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var * count / (count - 1).clamp_min(1)).to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        out = (x - mean.to(x.dtype)[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def distributed_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (the tensor itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


@dataclasses.dataclass
class _Processes:
    world_size: int
    rank: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _join_processes(device: str | torch.device | None) -> _Processes:
    """Read torchrun's environment, pick the device and join the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        owns = True
    return _Processes(world, rank, device, owns)


# ------------------------------------------------------------------------------------ errors


class NonFiniteLossError(FloatingPointError):
    """A logged loss became NaN or infinite; the message names model, step and terms."""


class TrainingInterrupted(SystemExit):
    """SIGTERM/SIGINT arrived; a checkpoint was written. Exits with 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class _StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current step (main thread only).

    A second SIGINT stops at once (KeyboardInterrupt), for a user who will not wait.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        print(f"received {signal.Signals(signum).name}: finishing the current step, then writing a checkpoint", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -------------------------------------------------------------------------------------- data


class _ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled from ``seed + epoch``, tail dropped so every process
    gets the same count) that can begin an epoch at any position of its shard."""

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class _BatchStream:
    """Endless per-process batches; ``(epoch, batch_in_epoch)`` is its exact position.

    Process ``r`` of ``W`` takes items ``r, r + W, ...`` of each global batch's slice of the
    epoch's permutation, so the union over processes is the batch one process would see.
    """

    def __init__(self, dataset: Dataset, global_batch: int, procs: _Processes, seed: int, num_workers: int):
        self.dataset = dataset
        self.batch = global_batch // procs.world_size
        self.sampler = _ResumableSampler(dataset, procs.world_size, procs.rank, seed)
        self.steps_per_epoch = self.sampler.num_samples // self.batch
        self.seed, self.rank, self.num_workers = seed, procs.rank, num_workers
        self.pin_memory = procs.device.type == "cuda"
        self.epoch = 0
        self.batch_in_epoch = 0
        self._batches: Iterator | None = None

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.batch_in_epoch / self.steps_per_epoch

    def seek(self, epoch: int, batch_in_epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self._batches = None

    def _open_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.batch_in_epoch * self.batch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        # Workers' seeds come from this generator, not the global RNG, which the loader would
        # otherwise consume at a different moment in a resumed run.
        seed = int(np.random.SeedSequence((self.seed, self.epoch, self.rank)).generate_state(1)[0])
        loader = DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, num_workers=self.num_workers,
                            drop_last=True, pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(seed),
                            worker_init_fn=_ignore_sigint if self.num_workers else None)
        self._batches = iter(loader)

    def next(self) -> Any:
        if self._batches is None:
            self._open_epoch()
        batch = next(self._batches)
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.steps_per_epoch:
            self.seek(self.epoch + 1, 0)
        return batch


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the workers too; they keep serving the batch the current step is waiting
    for, and the main process shuts them down after its checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ------------------------------------------------------------------------------- small parts


@dataclasses.dataclass
class TrainResult:
    """How far a run got (also written to ``out_dir/progress.json``)."""

    model: str
    step: int
    images_seen: int
    epochs: float
    elapsed_s: float
    stopped_by: str          # "max_steps", "max_images" or "max_minutes"
    resumed_from_step: int   # 0 for a fresh run
    losses: dict[str, float]  # means over the last logged window
    batch_size: int
    world_size: int
    peak_rss_mib: float
    checkpoint: str


class _LossWindow:
    """Sums of each loss term since the last log line (checkpointed, so a resumed run's window
    means equal an uninterrupted run's)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0

    def add(self, losses: Mapping[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def add_on_device(self, losses: Mapping[str, float | torch.Tensor]) -> None:
        """:meth:`add` without reading the losses: tensors are summed where they are, in
        float64 (the same IEEE additions as :meth:`add` on their float values, so the means are
        bit for bit the same), until :meth:`materialize`."""
        for k, v in losses.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def materialize(self) -> None:
        """Read the sums kept on the device (one host sync)."""
        self.sums = {k: float(v) for k, v in self.sums.items()}

    def means(self) -> dict[str, float]:
        self.materialize()
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}

    def state_dict(self) -> dict[str, Any]:
        self.materialize()
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.counts, self.steps = dict(state["sums"]), dict(state["counts"]), state["steps"]


def _plain(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """JSON-normal form of the run's params (tuples become lists), as stored and compared."""
    return json.loads(json.dumps(dict(params or {}), sort_keys=True, default=str))


# Keys (last dotted component) that set how long or how visibly a run goes, not what it learns:
# they may change between resumptions (a longer budget continues the run).
_BUDGET_KEYS = frozenset({"max_steps", "max_images", "max_minutes", "log_every", "checkpoint_every",
                          "checkpoint_minutes", "sample_every", "sample_count", "num_workers",
                          "curve_samples"})


def _run_identity(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params that must match for a checkpoint to be resumed: all but budget/cadence keys."""
    return {k: v for k, v in params.items() if k.rsplit(".", 1)[-1] not in _BUDGET_KEYS}


def _params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_run_identity(params), sort_keys=True).encode()).hexdigest()


def run_digest(params: Mapping[str, Any] | None) -> str:
    """Identity of a run: the digest of its params without budget/cadence keys. Two param sets
    with the same digest can resume each other's checkpoints."""
    return _params_digest(_plain(params))


def curve_budgets(first: int, up_to: int) -> list[int]:
    """Images-shown budgets of the learning-curve points: ``first * 2**k`` up to ``up_to``."""
    out, b = [], first
    while first > 0 and b <= up_to:
        out.append(b)
        b *= 2
    return out


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels where torch has them (warn where not), restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with warnings.catch_warnings():
            if enabled:  # name every op that has no deterministic kernel in the run's log, once
                warnings.showwarning = _log_nondeterministic(warnings.showwarning)
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _log_nondeterministic(show):
    """A ``warnings.showwarning`` that logs torch's "does not have a deterministic
    implementation" warnings once per op (the ops a deterministic run cannot repeat) and passes
    every other warning to ``show``."""
    seen: set[str] = set()

    def showwarning(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "deterministic" in text:
            op = text.split(" does not have")[0]
            if op not in seen:
                seen.add(op)
                log.warning("deterministic run: %s has no deterministic implementation; this op may not repeat bit for bit", op)
            return
        show(message, category, filename, lineno, file, line)

    return showwarning


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _image_grid(images: torch.Tensor | Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """``H x W x 3`` uint8 grid: a tensor is laid out near-square; a sequence of panels gives
    one row per example and one column per panel. White padding."""
    if isinstance(images, torch.Tensor):
        tiles, columns = images, math.ceil(math.sqrt(len(images)))
    else:
        tiles, columns = torch.stack(list(images), dim=1).flatten(0, 1), len(images)
    tiles = tiles.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = tiles.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(c, pad + rows * (h + pad), pad + columns * (w + pad))
    for i, tile in enumerate(tiles):
        y, x = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        grid[:, y:y + h, x:x + w] = tile
    return tracking.image_to_uint8(grid)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines a run resumed at ``last_step`` would have written: drop later steps
    (written after the checkpoint, before a kill), end-of-run flushes and torn lines."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", math.inf) <= last_step and not record.get("end_of_run"):
            kept.append(line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- loop


def train(
    recipe: Recipe,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    batch_size: int,
    max_steps: int | None = None,
    max_images: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 500,
    checkpoint_minutes: float | None = 15.0,
    sample_every: int = 500,
    sample_count: int = 8,
    num_workers: int = 0,
    params: Mapping[str, Any] | None = None,
    stage: str | None = None,
    device: str | torch.device | None = None,
    deterministic: bool = True,
    curve_first: int = 2000,
    runtime: Any = None,
    defer_sync: bool | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``dataset`` into ``out_dir``, resuming from its newest checkpoint.

    Args:
        recipe: the model's :class:`Recipe`.
        dataset: map-style dataset of dicts of tensors (``image``, ``mask``, ...).
        out_dir: checkpoints, stats, samples, progress. An existing checkpoint here is resumed.
        batch_size: global batch, images per optimisation step summed over all processes
            (each process takes ``batch_size / world_size``).
        max_steps, max_images, max_minutes: budget of the whole run (all resumptions
            together); training stops at the first one reached. At least one is required.
            A budget the checkpoint already meets trains nothing.
        seed: seeds Python, NumPy and torch (process ``r`` uses ``seed + r``), the data order
            and dataloader workers.
        log_every: steps per ``stats.jsonl`` / MLflow line (window means).
        checkpoint_every, checkpoint_minutes: periodic checkpoints, whichever comes first
            (``None`` minutes: steps only).
        sample_every, sample_count: a sample grid of the first ``sample_count`` dataset items
            every ``sample_every`` steps and at the end (0 items: none).
        num_workers: dataloader worker processes (results do not depend on it when the
            dataset draws its randomness from ``(seed, epoch, index)`` like
            ``faceinpaint.data.TrainingDataset``).
        params: flat ``{"a.b": value}`` settings of this run, logged to MLflow and stored in the
            checkpoint. Resuming with different params raises :class:`CheckpointError` listing
            what changed, except keys ending in a budget or cadence name (``max_steps``,
            ``max_images``, ``max_minutes``, ``log_every``, ``checkpoint_every``,
            ``checkpoint_minutes``, ``sample_every``, ``sample_count``, ``num_workers``).
        stage: MLflow stage name (default: ``recipe.name``).
        device: default CUDA (``cuda:LOCAL_RANK``) if available, else CPU.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only; each op without a
            deterministic kernel is named once in the log) and deterministic cuDNN for the
            duration of the call; ``False`` on CUDA: ``cudnn.benchmark``.
        curve_first: images shown at the first learning-curve point (``Recipe.curve_point``),
            then at each doubling (:func:`curve_budgets`); points go to ``curve.jsonl`` and MLflow.
            0: none.
        runtime: the fast paths (``faceinpaint.config.RuntimeParams``: ``precision``,
            ``channels_last``, ``compile``); ``None`` or all off: fp32 eager, today's numerics.
            Not part of the run's identity: a run may resume with other settings.
        defer_sync: keep each step's losses on the device and read them (and check them for
            NaN/inf) only every ``log_every`` steps and before every checkpoint, so that a step
            never waits for the host; a non-finite loss is then reported for the window of
            steps since the last log line, still before anything is saved. Default (``None``):
            on for one CUDA process, off otherwise (the logged values are the same bit for bit).

    Raises:
        NonFiniteLossError: a loss became NaN/inf (nothing is saved after the last good step).
        TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was written; exit code 143/130.
        CheckpointError: the checkpoints in ``out_dir`` are unusable or belong to another run.
    """
    if max_steps is None and max_images is None and max_minutes is None:
        raise ValueError("give at least one of max_steps, max_images, max_minutes")
    procs = _join_processes(device)
    try:
        with _determinism(deterministic, procs.device):
            run = _TrainingRun(recipe, dataset, Path(out_dir), procs, batch_size=batch_size, max_steps=max_steps,
                               max_images=max_images, max_minutes=max_minutes, seed=seed, log_every=log_every,
                               checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
                               sample_every=sample_every, sample_count=sample_count, num_workers=num_workers,
                               params=_plain(params), stage=stage or recipe.name, curve_first=curve_first,
                               runtime=runtime, defer_sync=defer_sync)
            return run.run()
    finally:
        if procs.owns_group:
            dist.destroy_process_group()


class _TrainingRun:
    """State of one invocation of :func:`train` (see there for the arguments)."""

    def __init__(self, recipe: Recipe, dataset: Dataset, out_dir: Path, procs: _Processes, *, batch_size: int,
                 max_steps, max_images, max_minutes, seed, log_every, checkpoint_every, checkpoint_minutes,
                 sample_every, sample_count, num_workers, params, stage, curve_first=0, runtime=None, defer_sync=None):
        if batch_size % procs.world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {procs.world_size} processes")
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {batch_size}")
        self.recipe, self.dataset, self.procs = recipe, dataset, procs
        self.out_dir, self.ckpt_dir = out_dir, out_dir / CHECKPOINT_DIR
        self.batch_size, self.seed, self.params, self.stage = batch_size, seed, params, stage
        self.max_steps, self.max_images, self.max_minutes = max_steps, max_images, max_minutes
        self.log_every, self.checkpoint_every, self.checkpoint_minutes = log_every, checkpoint_every, checkpoint_minutes
        self.sample_every = sample_every
        self.device = procs.device

        _seed_all(seed + procs.rank)
        self.modules = dict(recipe.build(self.device))
        self._check_names()
        if procs.world_size > 1:  # batch statistics of the global batch, as one process would see
            for name in recipe.trainable:
                self.modules[name] = (nn.SyncBatchNorm.convert_sync_batchnorm(self.modules[name]) if self.device.type == "cuda"
                                      else ProcessGroupBatchNorm2d.convert(self.modules[name]))
        for name, spec in recipe.ema.items():
            self.modules[name] = make_ema(self.modules[spec.source])
        self.optimizers = dict(recipe.optimizers(self.modules))
        self.schedulers = dict(recipe.schedulers(self.optimizers))
        self.saved_modules = (*recipe.trainable, *recipe.ema)
        self.runtime = runtime
        self.channels_last = bool(_runtime_value(runtime, "channels_last", False))
        if defer_sync is None:
            defer_sync = self.device.type == "cuda" and procs.world_size == 1
        if defer_sync and procs.world_size > 1:
            raise ValueError("defer_sync needs one process (several agree on stopping through a per-step reduction)")
        self.defer_sync = defer_sync
        apply_runtime(self.modules, recipe.trainable, runtime, ema_names=tuple(recipe.ema), eager=recipe.double_backward)

        self.stream = _BatchStream(dataset, batch_size, procs, seed, num_workers)
        self.window = _LossWindow()
        self.step = self.images_seen = 0
        self.elapsed_before = 0.0
        self.last_checkpoint: tuple[Path, int] | None = None
        self.last_losses: dict[str, float] = {}
        found = load_latest(self.ckpt_dir)
        if found is not None:
            self._restore(*found)
        self.resumed_from_step = self.step
        self.curve_first = curve_first
        self.next_curve = curve_first
        while curve_first > 0 and self.next_curve <= self.images_seen:
            self.next_curve *= 2

        self.step_modules = dict(self.modules)
        if procs.world_size > 1:
            for name in recipe.trainable:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.step_modules[name] = DistributedDataParallel(self.modules[name], device_ids=ids)
        self.sample_batch = None
        if procs.main and sample_count > 0:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(0)  # the same sample items (and masks) in every run and resumption
            with _rng_preserved():
                items = [dataset[i] for i in range(min(sample_count, len(dataset)))]
            self.sample_batch = _to_device(default_collate(items), self.device)

    def _check_names(self) -> None:
        r = self.recipe
        missing = [n for n in r.trainable if n not in self.modules]
        if missing:
            raise ValueError(f"recipe {r.name!r}: trainable modules {missing} are not among build()'s {sorted(self.modules)}")
        for name, spec in r.ema.items():
            if spec.source not in r.trainable:
                raise ValueError(f"recipe {r.name!r}: EMA {name!r} averages {spec.source!r}, which is not trainable")
            if name in self.modules:
                raise ValueError(f"recipe {r.name!r}: EMA name {name!r} is also a module name")
        for name in r.trainable:
            if not any(p.requires_grad for p in self.modules[name].parameters()):
                raise ValueError(f"recipe {r.name!r}: trainable module {name!r} has no parameter that requires grad")

    # ----------------------------------------------------------------------- checkpoints

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        r = self.recipe
        if state.get("model") != r.name:
            raise CheckpointError(f"{path}: belongs to model {state.get('model')!r}, not {r.name!r}")
        if state["params_sha256"] != _params_digest(self.params):
            old, new = _run_identity(state["params"]), _run_identity(self.params)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise CheckpointError(f"{path}: was trained with other params ({diff}); use the same params to resume, "
                                  f"or delete {self.out_dir} to start over")
        if state["batch_size"] != self.batch_size:
            raise CheckpointError(f"{path}: was trained with batch_size {state['batch_size']}, not {self.batch_size}; "
                                  "the data order cannot continue with another batch size")
        for name in self.saved_modules:
            if name not in state["modules"]:
                raise CheckpointError(f"{path}: has no weights for module {name!r}")
            unwrap(self.modules[name]).load_state_dict(state["modules"][name])
        for kind, own in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            if set(state[kind]) != set(own):
                raise CheckpointError(f"{path}: has {kind} {sorted(state[kind])}, the recipe makes {sorted(own)}")
            for name, obj in own.items():
                obj.load_state_dict(state[kind][name])
        r.load_state_dict(state["recipe_state"])
        if state["world_size"] == self.procs.world_size:
            restore_rng_state(state["rng"][self.procs.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: random streams restart from the seed, "
                        "so the continuation differs from an uninterrupted run", path, state["world_size"], self.procs.world_size)
            _seed_all(self.seed + self.procs.rank + 1_000_003 * state["step"])
        self.step, self.images_seen, self.elapsed_before = state["step"], state["images_seen"], state["elapsed_s"]
        self.stream.seek(state["epoch"], state["batch_in_epoch"])
        self.window.load_state_dict(state["log_window"])
        self.last_losses = dict(state["last_losses"])
        self.last_checkpoint = (path, self.step)
        if self.procs.main:
            log.info("%s: resuming from %s at step %d (%d images seen)", r.name, path, self.step, self.images_seen)

    def _save(self) -> None:
        if self.defer_sync:
            self._check_window_finite()
        rng = capture_rng_state()
        if self.procs.world_size > 1:
            every_rng: list[Any] = [None] * self.procs.world_size
            dist.all_gather_object(every_rng, rng)
        else:
            every_rng = [rng]
        if self.procs.main:
            state = {
                "model": self.recipe.name,
                "params": self.params,
                "params_sha256": _params_digest(self.params),
                "batch_size": self.batch_size,
                "world_size": self.procs.world_size,
                "seed": self.seed,
                "step": self.step,
                "images_seen": self.images_seen,
                "epoch": self.stream.epoch,
                "batch_in_epoch": self.stream.batch_in_epoch,
                "elapsed_s": self.elapsed,
                "modules": {name: unwrap(self.modules[name]).state_dict() for name in self.saved_modules},
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
                "recipe_state": self.recipe.state_dict(),
                "rng": every_rng,
                "log_window": self.window.state_dict(),
                "last_losses": self.last_losses,
            }
            path = save_checkpoint(self.ckpt_dir, state)
            self.last_checkpoint = (path, self.step)
        if self.procs.world_size > 1:
            dist.barrier()  # nobody exits (e.g. after a signal) while rank 0 is still writing
        self.last_save_time = time.monotonic()

    # ----------------------------------------------------------------------------- steps

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def _budget_reached(self, time_up: bool) -> str | None:
        if self.max_steps is not None and self.step >= self.max_steps:
            return "max_steps"
        if self.max_images is not None and self.images_seen >= self.max_images:
            return "max_images"
        if time_up:
            return "max_minutes"
        return None

    def _time_up(self) -> bool:
        return self.max_minutes is not None and self.elapsed >= 60.0 * self.max_minutes

    def _reduce(self, losses: Mapping[str, float | torch.Tensor], flags: list[bool]) -> tuple[dict[str, float], list[bool]]:
        """Means of the losses over processes (so rank 0 logs the global batch's values) and
        whether any process raised each flag."""
        keys = sorted(losses)
        values = [float(losses[k]) for k in keys]
        if self.procs.world_size == 1:
            return dict(zip(keys, values)), flags
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        packed = torch.tensor(values + [float(f) for f in flags], dtype=torch.float64, device=comm)
        dist.all_reduce(packed)
        packed = packed.tolist()
        means = {k: v / self.procs.world_size for k, v in zip(keys, packed)}
        return means, [v > 0 for v in packed[len(keys):]]

    def _check_finite(self, losses: Mapping[str, float]) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if not bad:
            return
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        if self.last_checkpoint is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = f"the last good checkpoint, {self.last_checkpoint[0]} (step {self.last_checkpoint[1]}), is kept"
        raise NonFiniteLossError(f"model {self.recipe.name!r}: non-finite loss at step {self.step} "
                                 f"(train_step step={self.step - 1}, {self.images_seen} images seen): {terms}. "
                                 f"Training stopped without saving; {kept}.")

    def _check_window_finite(self) -> None:
        """With deferred reads: the window's sums are finite (a NaN or inf of any step in it
        propagates into its sum), else :class:`NonFiniteLossError` naming the window's steps."""
        if not self.window.steps:
            return
        means = self.window.means()
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if not bad:
            return
        first = self.step - self.window.steps + 1
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        kept = ("no checkpoint had been written yet" if self.last_checkpoint is None else
                f"the last good checkpoint, {self.last_checkpoint[0]} (step {self.last_checkpoint[1]}), is kept")
        raise NonFiniteLossError(f"model {self.recipe.name!r}: non-finite loss in steps {first}..{self.step} "
                                 f"(losses are read every log_every steps on this device; {self.images_seen} images seen): "
                                 f"window means {terms}. Training stopped without saving; {kept}.")

    def _update_ema(self) -> None:
        for name, spec in self.recipe.ema.items():
            update_ema(self.modules[name], self.modules[spec.source], spec.decay(self.batch_size, self.images_seen))

    def _log(self, end_of_run: bool = False) -> None:
        if self.defer_sync:
            self._check_window_finite()
        means = self.window.means()
        clash = _RESERVED_STATS_KEYS.intersection(means) | {k for k in means if k.startswith("lr/")}
        if clash:
            raise ValueError(f"recipe {self.recipe.name!r} logs losses named {sorted(clash)}, which stats.jsonl reserves")
        rates = {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in sorted(self.optimizers.items())}
        now = time.monotonic()
        window_s = now - self.window_started
        speed = self.window_steps_here * self.batch_size / window_s if self.window_steps_here and window_s > 0 else 0.0
        self.last_losses = means
        if self.procs.main:
            record = {"step": self.step, "images_seen": self.images_seen, "epoch": round(self.stream.epochs_done, 4), **means, **rates}
            if end_of_run:
                record["end_of_run"] = True
            _append_jsonl(self.out_dir / STATS_FILE, record)
            timing = {"step": self.step, "elapsed_s": round(self.elapsed, 3), "images_per_s": round(speed, 3),
                      "sec_per_step": round(window_s / self.window_steps_here, 5) if self.window_steps_here else None,
                      "peak_rss_mib": round(_peak_rss_mib(), 1)}
            if self.device.type == "cuda":
                timing["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            _append_jsonl(self.out_dir / TIMING_FILE, timing)
            tracking.log_metrics({**means, **rates, "images_seen": self.images_seen, "images_per_s": speed}, self.step)
            terms = " ".join(f"{k}={v:.4g}" for k, v in means.items())
            log.info("%s step %d%s | %d images | epoch %.2f | %.2f img/s | %s | %s", self.recipe.name, self.step,
                     f"/{self.max_steps}" if self.max_steps is not None else "", self.images_seen,
                     self.stream.epochs_done, speed, self._eta(speed), terms)
        self.window.reset()
        self.window_started, self.window_steps_here = now, 0

    def _eta(self, images_per_s: float) -> str:
        """Time left to the first budget that will be reached, at the current rate."""
        left = []
        if images_per_s > 0:
            if self.max_steps is not None:
                left.append((self.max_steps - self.step) * self.batch_size / images_per_s)
            if self.max_images is not None:
                left.append((self.max_images - self.images_seen) / images_per_s)
        if self.max_minutes is not None:
            left.append(60.0 * self.max_minutes - self.elapsed)
        if not left:
            return "ETA ?"
        seconds = max(0.0, min(left))
        return f"ETA {int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"

    def _sample(self) -> None:
        if self.sample_batch is None:
            return
        with torch.no_grad(), _rng_preserved():
            images = self.recipe.sample(self.modules, self.sample_batch)
        if images is None:
            return
        grid = _image_grid(images)
        name = f"step_{self.step:07d}.png"
        (self.out_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self.out_dir / SAMPLES_DIR / name)
        tracking.log_image(grid, f"{SAMPLES_DIR}/{name}")
        self.last_sample_step = self.step

    def _curve_point(self) -> None:
        while self.next_curve <= self.images_seen:
            self.next_curve *= 2
        if not self.procs.main:
            return
        started = time.monotonic()
        with torch.no_grad(), _rng_preserved():
            values = self.recipe.curve_point({k: unwrap(m) for k, m in self.modules.items()})
        if not values:
            return
        record = {"step": self.step, "images_seen": self.images_seen, **{k: float(v) for k, v in values.items()},
                  "curve_s": round(time.monotonic() - started, 1)}
        _append_jsonl(self.out_dir / CURVE_FILE, record)
        tracking.log_metrics({f"curve_{k}": float(v) for k, v in values.items()}, self.step)
        log.info("%s: curve point at %d images: %s", self.recipe.name, self.images_seen,
                 ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def _result(self, stopped_by: str) -> TrainResult:
        return TrainResult(
            model=self.recipe.name, step=self.step, images_seen=self.images_seen, epochs=round(self.stream.epochs_done, 4),
            elapsed_s=round(self.elapsed, 3), stopped_by=stopped_by, resumed_from_step=self.resumed_from_step,
            losses=dict(self.last_losses), batch_size=self.batch_size, world_size=self.procs.world_size,
            peak_rss_mib=round(_peak_rss_mib(), 1),
            checkpoint=str(self.last_checkpoint[0]) if self.last_checkpoint else "")

    def run(self) -> TrainResult:
        self.started = self.last_save_time = self.window_started = time.monotonic()
        self.window_steps_here = 0
        self.last_sample_step = -1
        stopped_by = self._budget_reached(self._time_up())
        if stopped_by is not None:
            result = self._result(stopped_by)
            if self.procs.main:
                log.info("%s: the checkpoint at step %d already meets the budget (%s); nothing to train",
                         self.recipe.name, self.step, stopped_by)
                # e.g. a run stopped by a signal whose budget was then set to the step it reached
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
            return result
        if self.procs.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Logs continue from the checkpoint: drop what a killed run wrote after it (or all of
            # it, for a run killed before its first checkpoint) and the previous end-of-run line.
            for name in (STATS_FILE, TIMING_FILE, CURVE_FILE):
                _truncate_jsonl(self.out_dir / name, self.step if self.last_checkpoint else -1)
            budget = {"batch_size": self.batch_size, "seed": self.seed, "world_size": self.procs.world_size,
                      "max_steps": self.max_steps, "max_images": self.max_images, "max_minutes": self.max_minutes}
            run_context = tracking.start_run(self.stage, self.recipe.name, {**self.params, **budget},
                                             tags={"resumed_from_step": str(self.step)})
        else:
            run_context = contextlib.nullcontext()
        with run_context, _StopSignals() as signals:
            while True:
                batch = _to_device(self.stream.next(), self.device)
                if self.channels_last:
                    batch = to_channels_last(batch)
                with step_context(self.runtime, self.device):
                    losses = self.recipe.train_step(self.step_modules, self.optimizers, batch, self.step)
                for scheduler in self.schedulers.values():
                    scheduler.step()
                self.step += 1
                self.images_seen += self.batch_size
                self._update_ema()
                checkpoint_due = self.checkpoint_minutes is not None and time.monotonic() - self.last_save_time >= 60.0 * self.checkpoint_minutes
                if self.defer_sync:  # no host sync: the losses stay on the device until log_every
                    interrupted, time_up = signals.received is not None, self._time_up()
                    self.window.add_on_device(losses)
                else:
                    losses, (interrupted, time_up, checkpoint_due) = self._reduce(
                        losses, [signals.received is not None, self._time_up(), checkpoint_due])
                    self._check_finite(losses)
                    self.window.add(losses)
                self.window_steps_here += 1
                if self.step % self.log_every == 0:
                    self._log()
                if self.step % self.sample_every == 0:
                    self._sample()
                if self.curve_first > 0 and self.images_seen >= self.next_curve:
                    self._curve_point()
                stopped_by = self._budget_reached(time_up)
                if stopped_by is not None:
                    break
                if interrupted:
                    self._save()
                    signum = signals.received or signal.SIGTERM
                    message = (f"{self.recipe.name}: stopped by {signal.Signals(signum).name} after step {self.step} "
                               f"({self.images_seen} images); checkpoint written to {self.ckpt_dir / 'latest.pt'}; "
                               "run the same command again to resume")
                    print(message, file=sys.stderr, flush=True)
                    raise TrainingInterrupted(signum, message)
                if self.step % self.checkpoint_every == 0 or checkpoint_due:
                    self._save()
            if self.window.steps:
                self.last_losses = self.window.means()
            self._save()
            if self.window.steps:
                self._log(end_of_run=True)  # after the save, which keeps the open window for a longer run
            if self.last_sample_step != self.step:
                self._sample()
            result = self._result(stopped_by)
            if self.procs.main:
                (self.out_dir / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
                for name in (STATS_FILE, TIMING_FILE, PROGRESS_FILE, CURVE_FILE):
                    if (self.out_dir / name).is_file():  # curve.jsonl only once a curve point was taken
                        tracking.log_artifact(self.out_dir / name)
                log.info("%s: stopped by %s at step %d (%d images, %.0f s)", self.recipe.name, stopped_by,
                         self.step, self.images_seen, result.elapsed_s)
        return result
