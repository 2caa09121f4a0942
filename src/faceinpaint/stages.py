"""What each DVC stage does beyond its model: train -> export -> metrics and plot files.

``train_stage`` runs the one training loop on a model's recipe, then writes the model's
inference file (``artifacts/models/<model>/model.pt``; ``stylegan2.pt`` for the prior, in
rosinality's layout), ``reports/metrics/train_<model>.json`` (how far it got) and
``reports/plots/train_<model>.csv`` (loss curves for ``dvc plots``).

A run's identity (:func:`run_identity`) is everything that changes its result: the params the
stage reads (:data:`READS`) and those of its upstream stages, plus the sha256 of the training
images and of every upstream model file it loads. Budget and cadence keys are not part of it
(:func:`faceinpaint.training.run_digest`), so raising a budget continues the run, while a
retrained prior gives the structure stage (and the texture stages after it) a new identity and
a fresh run. Each identity trains in ``artifacts/models/<model>/runs/<id>/``; only the current
run stays inside the DVC output, others wait in ``artifacts/archive/<model>/`` (outside every
output, so the model store never carries them) and come back when their identity is current
again.
"""

from __future__ import annotations

import csv
import json
import shutil
import logging
from pathlib import Path

import numpy as np
import torch

from .checkpoint import PREVIOUS, CheckpointError, detach_links
from .training import CURVE_FILE
from .config import Config
from .data import PREPARED_DIR, PreparedData, to_tensor_image, to_uint8_image, training_dataset
from .models import MODELS, TRAINED, upstream_chain
from .pretrained.weights import sha256_of
from .recipes import MODELS_DIR, export_model, make_recipe

log = logging.getLogger(__name__)
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")


ARCHIVE_DIR = Path("artifacts/archive")

# What each training stage reads from params.yaml (profile keys without their
# ``profiles.<profile>.`` prefix) and the trained models it loads: from the registry. dvc.yaml
# declares exactly these for each stage, with those of its upstream stages (tests/test_pipeline.py).
READS: dict[str, tuple[str, ...]] = {m: MODELS[m].reads for m in TRAINED}
UPSTREAM: dict[str, tuple[str, ...]] = {m: MODELS[m].upstream for m in TRAINED}


def _section_name(name: str) -> str:
    return MODELS[name].section


def stage_reads(name: str) -> tuple[str, ...]:
    """The params paths a stage's result depends on: its own and its upstream stages'."""
    paths: list[str] = []
    for m in (name, *upstream_chain(name)):
        paths += [p for p in READS[m] if p not in paths]
    return tuple(paths)


def upstream_files(cfg: Config, name: str) -> dict[str, Path]:
    """The files whose content a run of ``name`` learns from: the training images and the
    upstream model files it loads."""
    from .recipes import stylegan_checkpoint_path

    files = {"train_images": PREPARED_DIR / "train_images.npy"}
    for up in UPSTREAM[name]:
        files[up] = stylegan_checkpoint_path(cfg) if up == "stylegan" else MODELS_DIR / up / MODELS[up].export_file
    return files


# Options added after runs were trained: part of an identity only when switched on, so a run
# from before the option existed keeps its identity (and its checkpoint) while the option is off.
OFF_WHEN = {"stylegan.diffaugment": "", "stylegan.xflip": False,
            # the texture loss's reading (faceinpaint.losses.texture_loss): the stored models' by default
            "losses.texture.l1_reduction": "mean", "losses.texture.l1_region": "output",
            "losses.texture.perceptual_region": "output"}


def run_identity(cfg: Config, name: str) -> dict:
    """Flat params that identify a run of ``name`` (logged to MLflow and stored in its
    checkpoints): what it and its upstream stages read, and ``upstream.<x>.sha256`` of each file
    of :func:`upstream_files`. Raises :class:`~faceinpaint.recipes.ModelMissingError` naming an
    upstream file that does not exist."""
    from .recipes import ModelMissingError

    params = {k: v for k, v in cfg.params_under(stage_reads(name)).items() if OFF_WHEN.get(k, object()) != v}
    for key, path in upstream_files(cfg, name).items():
        if not path.is_file():
            raise ModelMissingError(f"{path}: needed by {name!r} and missing (run `dvc repro` up to {name!r})")
        params[f"upstream.{key}.sha256"] = sha256_of(path)
    return params


def _only_current_run(model_dir: Path, name: str, run_id: str) -> Path:
    """Move every other run of ``name`` out of the DVC output into the archive, and the current
    one back from there if it was archived; returns the current run's folder."""
    runs, archive = model_dir / "runs", ARCHIVE_DIR / name
    runs.mkdir(parents=True, exist_ok=True)
    for other in runs.iterdir():
        if other.name != run_id:
            archive.mkdir(parents=True, exist_ok=True)
            target = archive / other.name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(other), target)
            log.info("%s: run %s is not current; moved it to %s", name, other.name, target)
    current = runs / run_id
    if not current.exists() and (archive / run_id).exists():
        shutil.move(str(archive / run_id), current)
        log.info("%s: run %s is current again; restored it from %s", name, run_id, archive)
    return current


def _section(cfg: Config, name: str):
    return getattr(cfg, _section_name(name))


def trained_modules(recipe, out_dir: Path, device="cpu") -> dict:
    """Rebuild the recipe's modules (EMA copies included) and load the newest checkpoint."""
    return _trained(recipe, out_dir, device)[0]


def _trained(recipe, out_dir: Path, device="cpu") -> tuple[dict, dict]:
    """:func:`trained_modules` and the checkpoint they were loaded from (its step counters)."""
    from .checkpoint import load_module_states
    from .training import make_ema

    modules = recipe.build(torch.device(device))
    for ema_name, spec in recipe.ema.items():
        modules[ema_name] = make_ema(modules[spec.source])
    state = load_module_states(out_dir / "checkpoints", {k: modules[k] for k in (*recipe.trainable, *recipe.ema)})
    return modules, state


def write_loss_plot(stats_path: Path, plot_path: Path) -> None:
    """``stats.jsonl`` -> a CSV with one column per logged loss, for ``dvc plots``."""
    records = [json.loads(line) for line in stats_path.read_text().splitlines() if line.strip()] if stats_path.is_file() else []
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "end_of_run")})
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    with plot_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *keys])
        for r in records:
            w.writerow([r["step"], *(r.get(k, "") for k in keys)])


def write_curve_plot(curve_path: Path, plot_path: Path) -> None:
    """``curve.jsonl`` -> a CSV (``images_seen``, ``step``, one column per metric) for ``dvc plots``
    and the report's learning-curve figures; written (header only) before the first point too."""
    records = [json.loads(line) for line in curve_path.read_text().splitlines() if line.strip()] if curve_path.is_file() else []
    keys = sorted({k for r in records for k in r if k not in ("step", "images_seen", "curve_s")})
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    with plot_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["images_seen", "step", *keys])
        for r in records:
            w.writerow([r["images_seen"], r["step"], *(r.get(k, "") for k in keys)])


PRIOR_CHECKS = "prior_checks.csv"


def append_prior_check(path: Path, run: str, step: int, images_seen: int, quality: dict) -> None:
    """Keep the prior's full quality check (``prior.json``: both FDs, their sample count) of every
    budget the stage ended at, one row per (run, images shown). The stage ends once per training
    sitting, so the rows are the prior's curve at the end of each sitting, beside the log-spaced
    curve points of the run. The file persists across runs of the stage (``persist: true``); a
    repeated budget replaces its row, and rows of other runs (identities) stay, marked by ``run``."""
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if not (r["run"] == run and int(r["images_seen"]) == images_seen)]
    rows.append({"run": run, "step": step, "images_seen": images_seen, **quality})
    rows.sort(key=lambda r: (r["run"] != run, int(r["images_seen"])))
    columns = ["run", "step", "images_seen"]
    columns += sorted({k for r in rows for k in r} - set(columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


FINAL_FILE = "final.json"


class FinalRunError(RuntimeError):
    """A run declared final (its training state deleted) was asked for more steps, or its export
    no longer matches the one it was declared final with."""


def train_stage(cfg: Config, name: str, device="cpu") -> dict:
    """Train ``name`` on ``device``, export it and write its metric and plot files. Under
    torchrun (``WORLD_SIZE`` processes) the section's ``batch_size`` is each process's batch, so
    the global batch is ``batch_size x WORLD_SIZE`` (:func:`faceinpaint.config.check_batches`),
    and only rank 0 exports and writes."""
    import os

    from .config import check_batches
    from .training import TrainResult, run_digest, train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_batches(cfg.params, world, str(cfg.source))
    params = run_identity(cfg, name)
    recipe = make_recipe(cfg, name)
    p = _section(cfg, name)
    model_dir = MODELS_DIR / name
    out_dir = _only_current_run(model_dir, name, run_digest(params)[:12])
    detach_links(model_dir)  # files linked to the DVC cache and store/ are never written in place
    max_steps = cfg.profile.max_steps(name)
    if (out_dir / FINAL_FILE).is_file():  # finished: its export is the model, its state is gone
        _check_final(out_dir, model_dir / MODELS[name].export_file, max_steps)
        result = TrainResult(**json.loads((out_dir / "progress.json").read_text()))
        return _write_train_outputs(cfg, name, result, out_dir)
    _check_state(out_dir, name)
    result = train(
        recipe, training_dataset(cfg), out_dir,
        batch_size=p.batch_size * world, max_steps=max_steps, max_minutes=p.max_minutes, seed=cfg.seed,
        log_every=p.log_every, checkpoint_every=p.checkpoint_every, sample_every=p.sample_every,
        num_workers=p.num_workers, params=params, stage=f"train@{name}" if name not in ("stylegan", "structure") else name,
        device=device, deterministic=cfg.runtime.deterministic, runtime=cfg.runtime,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 exports and writes the stage's files
        return {"steps": result.step, "images_seen": result.images_seen, "train_time_s": result.elapsed_s,
                "stopped_by": result.stopped_by}
    modules = trained_modules(recipe, out_dir, device)
    # the newest checkpoint just loaded and verified: the older one would only double the store
    (out_dir / "checkpoints" / PREVIOUS).unlink(missing_ok=True)
    export_model(cfg, recipe, modules, model_dir)
    shutil.copyfile(out_dir / "progress.json", model_dir / "progress.json")
    if name == "stylegan":  # the prior's own metric file: images shown and the FDs of its samples
        quality = prior_quality(cfg, modules["G_ema"], device, cfg.evaluate.max_test_images)
        METRICS_DIR.mkdir(parents=True, exist_ok=True)
        (METRICS_DIR / "prior.json").write_text(json.dumps({"images_seen": result.images_seen, **quality}, indent=2) + "\n")
        append_prior_check(PLOTS_DIR / PRIOR_CHECKS, out_dir.name, result.step, result.images_seen, quality)
    return _write_train_outputs(cfg, name, result, out_dir)


def _write_train_outputs(cfg: Config, name: str, result, out_dir: Path) -> dict:
    metrics = {
        "model": name, "profile": cfg.profile_name, "resolution": cfg.resolution,
        "steps": result.step, "images_seen": result.images_seen, "train_time_s": round(result.elapsed_s, 1),
        "stopped_by": result.stopped_by, "peak_rss_mib": round(result.peak_rss_mib, 1),
        "final_losses": {k: round(float(v), 6) for k, v in result.losses.items()},
    }
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (METRICS_DIR / f"train_{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_loss_plot(out_dir / "stats.jsonl", PLOTS_DIR / f"train_{name}.csv")
    write_curve_plot(out_dir / CURVE_FILE, PLOTS_DIR / f"curve_{name}.csv")
    return metrics


class TrainingStateMissing(FinalRunError):
    """A run that has trained (its ``progress.json`` is there) lacks its training state."""


def _check_state(out_dir: Path, name: str) -> None:
    """Refuse to continue a run whose training state is gone: training would restart it at step 0
    over its logs and curve."""
    from .checkpoint import LATEST

    progress = out_dir / "progress.json"
    ckpts = out_dir / "checkpoints"
    if progress.is_file() and not (ckpts / LATEST).is_file() and not (ckpts / PREVIOUS).is_file():
        step = json.loads(progress.read_text()).get("step")
        stage = name if name in ("stylegan", "structure") else f"train@{name}"
        raise TrainingStateMissing(
            f"{ckpts / LATEST}: the training state of {name!r} (run {out_dir.name}, step {step}) is missing; continuing "
            f"the run needs it: `python scripts/store.py pull` brings every stored training state from store/ "
            f"(or `dvc pull {stage}`), or delete {out_dir} to train afresh")


def _check_final(out_dir: Path, export: Path, max_steps: int) -> dict:
    final = json.loads((out_dir / FINAL_FILE).read_text())
    if max_steps != final["step"]:
        raise FinalRunError(
            f"{out_dir}: this run was declared final at step {final['step']} ({final['images_seen']} images) and its "
            f"training state deleted (`faceinpaint finalize`), so it cannot train to max_steps {max_steps}: set "
            f"max_steps back to {final['step']}, or delete {out_dir} to train this model afresh")
    if not export.is_file() or sha256_of(export) != final["export_sha256"]:
        raise FinalRunError(f"{export}: missing or not the export this run was declared final with "
                            f"(sha256 {final['export_sha256'][:12]}...); `dvc pull` it, or delete {out_dir} to retrain")
    return final


def finalize_run(cfg: Config, name: str) -> dict:
    """Declare the current run of ``name`` final: it must have reached its step budget, and its
    export must hold exactly the weights of its last checkpoint (rebuilt and compared tensor by
    tensor); then its training state (``checkpoints/``) is deleted and ``final.json`` records
    the step, the images shown, the export's sha256 and that of the deleted state. The export
    is the model from then on: a stage re-run keeps it, and a larger budget is refused with a
    clear error. For a finished model whose training state is too large for the store
    (structure's: weights plus two Adam moments of the pSp encoder). The prior keeps its state
    (its stage recomputes its quality check from the trained modules)."""
    from .training import TrainResult, run_digest

    if name == "stylegan":
        raise FinalRunError("stylegan: the prior's stage recomputes its quality check from its training state; it cannot be finalized")
    model_dir = MODELS_DIR / name
    out_dir = model_dir / "runs" / run_digest(run_identity(cfg, name))[:12]
    export = model_dir / MODELS[name].export_file
    if (out_dir / FINAL_FILE).is_file():
        return _check_final(out_dir, export, cfg.profile.max_steps(name))
    progress = out_dir / "progress.json"
    if not progress.is_file():
        raise FinalRunError(f"{out_dir}: no current run of {name!r} to finalize (train it first)")
    result = TrainResult(**json.loads(progress.read_text()))
    if result.step != cfg.profile.max_steps(name) or result.stopped_by != "max_steps":
        raise FinalRunError(f"{progress}: the run stands at step {result.step} ({result.stopped_by}), not at its budget of "
                            f"{cfg.profile.max_steps(name)} steps; finish it (`faceinpaint train {name}`) first")
    if not export.is_file():
        raise FinalRunError(f"{export}: missing; run `faceinpaint train {name}` to export the finished run first")
    ckpt_dir = out_dir / "checkpoints"
    recipe = make_recipe(cfg, name)
    try:
        modules, state = _trained(recipe, out_dir)
    except CheckpointError as err:
        raise FinalRunError(str(err)) from None
    if state["step"] != result.step:
        raise FinalRunError(f"{ckpt_dir}: its newest checkpoint is at step {state['step']}, not at step {result.step}")
    stored = torch.load(export, map_location="cpu", weights_only=True)["state"]
    mismatch = [k for k, a, b in _paired_tensors(recipe.export(modules), stored)
                if a is None or b is None or not torch.equal(a, b)]
    if mismatch:
        raise FinalRunError(f"{export}: differs from the weights of the checkpoint at step {result.step} in {ckpt_dir} "
                            f"({', '.join(mismatch[:5])}); re-export it with `faceinpaint train {name}` before finalizing")
    final = {"model": name, "step": result.step, "images_seen": result.images_seen,
             "export_sha256": sha256_of(export),
             "deleted_state": {f.name: sha256_of(f) for f in sorted(ckpt_dir.glob("*.pt"))}}
    (out_dir / FINAL_FILE).write_text(json.dumps(final, indent=2) + "\n")
    shutil.rmtree(ckpt_dir)
    log.info("%s: run %s declared final at step %d; deleted its training state %s", name, out_dir.name, result.step,
             ", ".join(final["deleted_state"]))
    return final


def _paired_tensors(a, b, prefix=""):
    """(key, tensor of a, tensor of b) over the nested dicts of two exports (None where absent)."""
    if isinstance(a, dict) or isinstance(b, dict):
        a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
        for k in sorted(set(a) | set(b), key=str):
            yield from _paired_tensors(a.get(k), b.get(k), f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), a, b


@torch.no_grad()
def prior_quality(cfg: Config, g_ema, device="cpu", n_samples: int | None = None) -> dict:
    """Frechet distances of the prior's samples to the test images on both backbones
    (:mod:`faceinpaint.prior_quality`) and a sample grid at ``reports/stylegan_samples.png``."""
    from PIL import Image

    from .prior_quality import PriorQuality

    values, samples = PriorQuality(cfg, n_samples, device).check(g_ema)
    grid = list(to_uint8_image(samples))
    rows = [np.concatenate(grid[i:i + 8], 1) for i in range(0, len(grid) // 8 * 8, 8)]
    Path("reports").mkdir(exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save("reports/stylegan_samples.png")
    return values


@torch.no_grad()
def identity_check(cfg: Config, device="cpu", n_pairs: int = 1000) -> dict:
    """Same- vs different-identity ROC AUC of the face-recognition network (the ID loss's R and
    the identity metric) on the prepared test images, with the identity box mapped into the
    crop: how much identity signal survives at the profile's resolution."""
    from .data import identity_box_fraction
    from .pretrained import IdentityEmbedder, identity_auc, load_face_recognition

    prepared = PreparedData(PREPARED_DIR)
    images, labels = prepared.images("test"), prepared.index("test")["identity"].to_numpy()
    embedder = IdentityEmbedder(load_face_recognition(cfg.backbones.face_recognition), identity_box_fraction(cfg)).to(device)
    embeddings = torch.cat([
        embedder(to_tensor_image(images[i:i + 64]).to(device)).cpu()
        for i in range(0, len(images), 64)])
    result = {
        "network": "faceapi-recognition (dlib ResNet-29 metric net)",
        "resolution": cfg.resolution,
        "identity_box_fraction": [round(f, 4) for f in identity_box_fraction(cfg)],
        "images": int(len(images)),
        "identities": int(len(set(labels))),
        "pairs_per_kind": n_pairs,
        "roc_auc": round(identity_auc(embeddings, labels, n_pairs, seed=cfg.seed), 4),
    }
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (METRICS_DIR / "identity_auc.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
