"""What each DVC stage does beyond its model: train -> export -> metrics and plot files.

``train_stage`` runs the one training loop on a model's recipe, then writes the model's
inference file (``artifacts/models/<model>/model.pt``; ``stylegan2.pt`` for the prior, in
rosinality's layout), ``reports/metrics/train_<model>.json`` (how far it got) and
``reports/plots/train_<model>.csv`` (loss curves for ``dvc plots``).

Each distinct set of params trains in its own folder ``artifacts/models/<model>/runs/<id>/``
(``id`` = :func:`faceinpaint.training.run_digest`, which ignores budget keys): switching
profile or an architecture param starts a fresh run without touching the others, switching
back resumes the old one, and raising a budget continues the same run.
"""

from __future__ import annotations

import csv
import shutil
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import PREPARED_DIR, PreparedData, to_uint8_image, training_dataset
from .recipes import MODELS_DIR, export_model, make_recipe

log = logging.getLogger(__name__)
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")


def _section_name(name: str) -> str:
    return "texture" if name in ("full", "variant1", "variant2") else name


def _section(cfg: Config, name: str):
    return getattr(cfg, _section_name(name))


def trained_modules(recipe, out_dir: Path, device="cpu") -> dict:
    """Rebuild the recipe's modules (EMA copies included) and load the newest checkpoint."""
    from .checkpoint import load_module_states
    from .training import make_ema

    modules = recipe.build(torch.device(device))
    for ema_name, spec in recipe.ema.items():
        modules[ema_name] = make_ema(modules[spec.source])
    load_module_states(out_dir / "checkpoints", {k: modules[k] for k in (*recipe.trainable, *recipe.ema)})
    return modules


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


def train_stage(cfg: Config, name: str, device="cpu") -> dict:
    from .training import train

    from .training import run_digest

    recipe = make_recipe(cfg, name)
    p = _section(cfg, name)
    params = cfg.stage_params(_section_name(name))
    model_dir = MODELS_DIR / name
    out_dir = model_dir / "runs" / run_digest(params)[:12]
    result = train(
        recipe, training_dataset(cfg), out_dir,
        batch_size=p.batch_size, max_steps=p.max_steps, max_minutes=p.max_minutes, seed=cfg.seed,
        log_every=p.log_every, checkpoint_every=p.checkpoint_every, sample_every=p.sample_every,
        num_workers=p.num_workers, params=params, stage=f"train@{name}" if name not in ("stylegan", "structure") else name,
        device=device,
    )
    modules = trained_modules(recipe, out_dir, device)
    export_model(cfg, recipe, modules, model_dir)
    shutil.copyfile(out_dir / "progress.json", model_dir / "progress.json")
    metrics = {
        "model": name, "profile": cfg.profile_name, "resolution": cfg.resolution,
        "steps": result.step, "images_seen": result.images_seen, "train_time_s": round(result.elapsed_s, 1),
        "stopped_by": result.stopped_by, "peak_rss_mib": round(result.peak_rss_mib, 1),
        "final_losses": {k: round(float(v), 6) for k, v in result.losses.items()},
    }
    if name == "stylegan":
        metrics.update(prior_quality(cfg, modules["G_ema"], recipe.p.style_dim, device, cfg.evaluate.max_test_images))
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (METRICS_DIR / f"train_{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_loss_plot(out_dir / "stats.jsonl", PLOTS_DIR / f"train_{name}.csv")
    return metrics


@torch.no_grad()
def prior_quality(cfg: Config, g_ema, style_dim: int, device="cpu", n_samples: int | None = None) -> dict:
    """Frechet distance of the prior's samples to the test images (named backbone) and a sample
    grid at ``reports/stylegan_samples.png``."""
    from PIL import Image

    from .metrics import frechet_distance, metric_key
    from .pretrained import fid_feature_extractor

    test = PreparedData(PREPARED_DIR).images("test")
    n = min(len(test), n_samples or len(test))
    fid = fid_feature_extractor(cfg.backbones.fid).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    real_feats, fake_feats, grid = [], [], []
    g_ema.eval()
    for start in range(0, n, 64):
        k = min(64, n - start)
        real = torch.from_numpy(np.asarray(test[start:start + k])).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        z = torch.randn(k, style_dim, generator=gen).to(device)
        fake = g_ema([z], randomize_noise=False)[0].clamp(-1, 1)
        real_feats.append(fid(real).double().cpu().numpy())
        fake_feats.append(fid(fake).double().cpu().numpy())
        if not grid:
            grid = list(to_uint8_image(fake[:32]))
    fd = frechet_distance(np.concatenate(real_feats), np.concatenate(fake_feats))
    rows = [np.concatenate(grid[i:i + 8], 1) for i in range(0, min(len(grid), 32) // 8 * 8, 8)]
    Path("reports").mkdir(exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save("reports/stylegan_samples.png")
    return {metric_key("fd", fid.name): round(float(fd), 4), "fd_samples": n}


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
        embedder(torch.from_numpy(np.array(images[i:i + 64])).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)).cpu()
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
