"""Why C1 fails at 64 px: two diagnostic stages on the stored models (issue "Why C1 fails at 64 px").

* :func:`stage2_residual` (``reports/diagnostics/stage2_residual.{json,png}``): what the texture
  stage (Ours) does to its input, stage 1, in the hole: hole PSNR of both per image and by
  distance to the hole's edge, the share of hole pixels it improves and damages, the cosine of its
  residual with ``target - stage 1``, the gradient each term of L_T (PAPER.md sec. 3) puts on the
  output inside and outside the hole, the cosine of the adversarial and hole-L1 parameter
  gradients, the critic's scores; optionally a fine-tune table (each loss reading trained on
  from Ours' last checkpoint for ``diagnostics.residual_finetune_steps`` steps).
* :func:`inversion_oracle` (``reports/diagnostics/inversion_oracle.{json,png}``): how much better
  stage 1 could be with the same frozen prior: the encoder's W+ code, then Adam on that code
  against the known pixels only, scored at ``diagnostics.inversion_steps``, beside biharmonic.

Both use the first ``diagnostics.*_images`` test images with their squares (image ``i``, square
``i % 10``, as the evaluation); 0 images writes a note that the stage is off (``smoke``).
Images are in [-1, 1]; PSNRs are on [0, 1] after clamping, as :func:`faceinpaint.metrics.psnr`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F

from .config import Config

log = logging.getLogger(__name__)
DIAGNOSTICS_DIR = Path("reports/diagnostics")
EDGE_RINGS = (1, 2, 3, 4)
"""Distance bins of a hole pixel to the nearest known pixel (chessboard metric): 1, 2, 3 px and
4 px or more (the last bin)."""
FINETUNE_READINGS = {
    "as_trained": {},
    "adversarial_0": {"adversarial": 0.0},
    "adversarial_0_composite": {"adversarial": 0.0, "l1_region": "composite", "perceptual_region": "composite"},
    "composite": {"l1_region": "composite", "perceptual_region": "composite"},
}
"""Loss readings of the fine-tune table: changes to ``losses.texture``."""


# ----------------------------------------------------------------------- per-pixel measures


def edge_distance(hole: np.ndarray) -> np.ndarray:
    """Chessboard distance of each hole pixel to the nearest known pixel (1 = a known pixel
    among its 8 neighbours); 0 outside the hole. ``hole``: ``H x W`` (or ``N x H x W``) bool."""
    hole = np.asarray(hole, dtype=bool)
    if hole.ndim == 3:
        return np.stack([edge_distance(h) for h in hole])
    if hole.all():
        raise ValueError("the hole covers the whole image: no known pixel to measure a distance to")
    return ndimage.distance_transform_cdt(hole, metric="chessboard").astype(np.int64)


def edge_rings(hole: np.ndarray) -> np.ndarray:
    """Ring index of each hole pixel: ``min(distance, 4)`` (:data:`EDGE_RINGS`); 0 outside."""
    return np.minimum(edge_distance(hole), EDGE_RINGS[-1])


def unit(images: Tensor) -> Tensor:
    """[-1, 1] images to [0, 1] float64, clamped as the metrics clamp."""
    return (images.detach().to(torch.float64).clamp(-1, 1) + 1) / 2


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-pixel squared error on [0, 1] summed over channels: ``N x H x W``."""
    return (unit(pred) - unit(target)).square().sum(1)


def psnr_of_mse(mse) -> np.ndarray:
    """``10 log10(1 / mse)`` (mse on [0, 1] per channel element)."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / np.asarray(mse, dtype=np.float64))


def region_psnr(pred: Tensor, target: Tensor, region: Tensor) -> np.ndarray:
    """Per-image PSNR over the pixels where ``region`` (``N x 1 x H x W``, 0/1) is 1, every channel."""
    r = region[:, 0].to(torch.float64)
    se = (squared_error(pred, target) * r).sum((1, 2))
    return psnr_of_mse((se / (3 * r.sum((1, 2)))).numpy())


def flat_cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two tensors flattened to vectors (0 when either is zero)."""
    a, b = a.detach().flatten().to(torch.float64), b.detach().flatten().to(torch.float64)
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else 0.0


# --------------------------------------------------------------------------- gradient shares


def output_gradient_shares(terms: dict[str, Tensor], output: Tensor, mask: Tensor) -> dict[str, dict[str, float]]:
    """For each weighted loss term, the L2 norm of its gradient on ``output`` inside the hole
    (``mask`` = 1) and outside it, and its share of the terms' summed norms in that region.
    ``terms``: name -> scalar tensor (weight applied) depending on ``output``."""
    hole = (mask > 0.5).to(output.dtype)
    norms = {}
    for name, term in terms.items():
        (grad,) = torch.autograd.grad(term, output, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(output) if grad is None else grad
        norms[name] = {"hole": float((grad * hole).norm()), "outside": float((grad * (1 - hole)).norm())}
    out = {}
    for region in ("hole", "outside"):
        total = sum(n[region] for n in norms.values())
        for name, n in norms.items():
            out.setdefault(name, {})[f"{region}_norm"] = n[region]
            out[name][f"{region}_share"] = n[region] / total if total > 0 else 0.0
    return out


def parameter_gradients(terms: dict[str, Tensor], params: list[nn.Parameter]) -> dict[str, Tensor]:
    """Each term's gradient on ``params``, flattened into one vector (zeros where unused)."""
    grads = {}
    for name, term in terms.items():
        g = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat([(torch.zeros_like(p) if x is None else x).flatten() for p, x in zip(params, g)])
    return grads


def texture_terms(out: dict[str, Tensor], image: Tensor, mask: Tensor, perceptual_net, critic, weights) -> dict[str, Tensor]:
    """The weighted terms of L_T under the reading of ``weights`` (``losses.texture``), plus the
    hole's and the known pixels' shares of the L1 (:func:`faceinpaint.losses.valid_hole_l1`,
    weighted like L1: both on the mean-L1 scale)."""
    from .losses import texture_loss, valid_hole_l1

    g = texture_loss(out["output"], image, mask, perceptual_net, critic, weights)
    valid, hole = valid_hole_l1(out["output"], image, mask)
    return {"perceptual": weights.perceptual * g["perceptual"], "adversarial": weights.adversarial * g["adversarial"],
            "l1": weights.l1 * g["l1"], "l1_hole": weights.l1 * hole, "l1_outside": weights.l1 * valid}


# ------------------------------------------------------------------------------------ data


def first_squares(cfg: Config, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` test images with their squares (image ``i``: square ``i % 10``)."""
    from .data import PREPARED_DIR, EvaluationDataset, PreparedData

    prepared = PreparedData(PREPARED_DIR)
    ds = EvaluationDataset.squares(prepared.images("test"), prepared.square_masks(), n)
    items = [ds[k] for k in range(len(ds))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _write(out_dir: Path, name: str, doc: dict, figure) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(paths["png"], dpi=110)
    return paths


def _off_figure(text: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _off(cfg: Config, out_dir: Path, name: str, key: str) -> dict[str, Path]:
    note = f"off for the {cfg.profile_name} profile (diagnostics.{key}: 0)"
    return _write(out_dir, name, {"profile": cfg.profile_name, "off": note}, _off_figure(f"{name}: {note}"))


# ------------------------------------------------------------------------ stage2 residual


def _texture_checkpoint(name: str = "full") -> Path:
    """The checkpoint folder of the texture model's current run (its ``progress.json``)."""
    from .recipes import MODELS_DIR, ModelMissingError

    progress = MODELS_DIR / name / "progress.json"
    if not progress.is_file():
        raise ModelMissingError(f"{progress}: {name!r} has not been trained")
    ckpt = Path(json.loads(progress.read_text())["checkpoint"])
    if not ckpt.is_file():
        raise ModelMissingError(f"{ckpt}: {name!r}'s training state (critic, optimisers) is not there "
                                f"(a finalized run keeps its export only); stage2_residual needs it")
    return ckpt.parent


def _with_texture_loss(cfg: Config, **changes) -> Config:
    """``cfg`` with ``losses.texture`` changed (validated)."""
    from .config import TextureLoss

    p = cfg.params
    texture = TextureLoss.model_validate({**p.losses.texture.model_dump(), **changes})
    return Config(p.model_copy(update={"losses": p.losses.model_copy(update={"texture": texture})}), cfg.source)


def _trained_full(cfg: Config, device):
    """Ours' recipe, modules (G and D from its last checkpoint) and that checkpoint."""
    from .checkpoint import load_module_states
    from .recipes import TextureRecipe

    recipe = TextureRecipe(cfg, "full")
    modules = recipe.build(device)
    state = load_module_states(_texture_checkpoint("full"), {"G": modules["G"], "D": modules["D"]})
    return recipe, modules, state


def residual_measures(image: Tensor, mask: Tensor, stage1: Tensor, ours: Tensor) -> dict:
    """Stage 1 against Ours on one set of images: ``stage1``, ``ours``: the raw outputs
    (``N x 3 x H x W``); their composites are scored. Per image hole PSNR, pooled PSNR by
    edge ring, shares of hole pixels improved / damaged, cosine of the residual with
    ``target - stage 1`` in the hole, and stage 1 plus half the residual."""
    hole = (mask > 0.5).to(image.dtype)
    comp = {"stage1": torch.where(hole > 0, stage1, image), "ours": torch.where(hole > 0, ours, image),
            "stage1_half_residual": torch.where(hole > 0, stage1 + 0.5 * (ours - stage1), image)}
    per_image = {k: region_psnr(v, image, hole) for k, v in comp.items()}
    whole = {k: psnr_of_mse((squared_error(v, image).sum((1, 2)) / (3 * image.shape[-1] ** 2)).numpy()) for k, v in comp.items()}
    rings = edge_rings(hole[:, 0].numpy() > 0.5)
    se = {k: squared_error(comp[k], image).numpy() for k in ("stage1", "ours")}
    by_ring = {}
    for r in EDGE_RINGS:
        sel = rings == r
        label = f"{r}px" if r < EDGE_RINGS[-1] else f"{r}px_or_more"
        by_ring[label] = {"pixels": int(sel.sum()),
                          **{k: float(psnr_of_mse(se[k][sel].sum() / (3 * sel.sum()))) if sel.any() else None for k in se}}
    inside = hole[:, 0].numpy() > 0.5
    improved = float((se["ours"][inside] < se["stage1"][inside]).mean())
    damaged = float((se["ours"][inside] > se["stage1"][inside]).mean())
    residual, wanted = (ours - stage1) * hole, (image - stage1) * hole
    cosines = np.array([flat_cosine(a, b) for a, b in zip(residual, wanted)])
    return {
        "images": int(len(image)),
        "whole_psnr_mean": {k: float(v.mean()) for k, v in whole.items()},
        "hole_psnr_mean": {k: float(v.mean()) for k, v in per_image.items()},
        "hole_psnr_pooled": {k: float(psnr_of_mse((squared_error(v, image) * hole[:, 0]).sum() / (3 * hole.sum())))
                             for k, v in comp.items()},
        "ours_below_stage1_share": float((per_image["ours"] < per_image["stage1"]).mean()),
        "hole_psnr_by_edge_distance": by_ring,
        "hole_pixels_improved_share": improved, "hole_pixels_damaged_share": damaged,
        "residual_cosine_with_target_minus_stage1": {"mean": float(cosines.mean()), "median": float(np.median(cosines))},
        "per_image": {"hole_psnr_stage1": per_image["stage1"].round(4).tolist(),
                      "hole_psnr_ours": per_image["ours"].round(4).tolist(),
                      "residual_cosine": cosines.round(4).tolist()},
    }


def stage2_residual(cfg: Config, out_dir: Path = DIAGNOSTICS_DIR, n_images: int | None = None,
                    finetune_steps: int | None = None, device="cpu") -> dict[str, Path]:
    """Write ``stage2_residual.{json,png}`` (module docstring) for Ours on the first
    ``diagnostics.residual_images`` test images with their squares (``n_images`` overrides)."""
    d = cfg.diagnostics
    n = d.residual_images if n_images is None else n_images
    steps = d.residual_finetune_steps if finetune_steps is None else finetune_steps
    if n == 0:
        return _off(cfg, out_dir, "stage2_residual", "residual_images")
    device = torch.device(device)
    t0 = time.perf_counter()
    image, mask = first_squares(cfg, n)
    recipe, modules, state = _trained_full(cfg, device)
    G, D = modules["G"].eval(), modules["D"].eval()
    weights = cfg.losses.texture
    stage1, ours, critic = [], [], {"real": [], "stage1": [], "ours": []}
    grad_rows, param_cos, param_norms = [], [], []
    params = [p for p in G.parameters() if p.requires_grad]
    D.requires_grad_(False)
    for sl in _batches(n, cfg.texture.batch_size):
        x, m = image[sl].to(device), mask[sl].to(device)
        out = recipe.generate(modules, x * (1 - m), m)
        stage1.append(out["stage1"].detach().cpu())
        ours.append(out["output"].detach().cpu())
        with torch.no_grad():
            critic["real"].append(D(x, m).cpu())
            critic["stage1"].append(D(torch.where(m > 0.5, out["stage1"], x), m).cpu())
            critic["ours"].append(D(out["composite"], m).cpu())
        terms = texture_terms(out, x, m, modules["perceptual"], D, weights)
        grad_rows.append((len(x), output_gradient_shares(
            {k: terms[k] for k in ("perceptual", "adversarial", "l1")}, out["output"], m)))
        pg = parameter_gradients({k: terms[k] for k in ("adversarial", "l1_hole", "l1_outside", "perceptual")}, params)
        param_cos.append((len(x), flat_cosine(pg["adversarial"], pg["l1_hole"])))
        param_norms.append((len(x), {k: float(v.norm()) for k, v in pg.items()}))
        # share of the L1 value outside the hole
        param_norms[-1][1]["l1_value_outside_share"] = float((terms["l1_outside"] / (terms["l1_outside"] + terms["l1_hole"])).detach())
    doc = {"profile": cfg.profile_name, "model": "full", "step": int(state["step"]), "images_seen": int(state["images_seen"]),
           "test_images": n, "masks": "squares (image i: square i % 10)", "loss_reading": weights.model_dump()}
    doc.update(residual_measures(image, mask, torch.cat(stage1), torch.cat(ours)))

    def weighted(rows, keys=None):
        total = sum(w for w, _ in rows)
        return {k: sum(w * r[k] for w, r in rows) / total for k in (keys or rows[0][1])}

    doc["output_gradient"] = {t: weighted([(w, r[t]) for w, r in grad_rows]) for t in ("perceptual", "adversarial", "l1")}
    doc["output_gradient"]["note"] = ("L2 norm of each weighted term's gradient on the raw output, inside the hole and "
                                      "outside, per batch of texture.batch_size, averaged over batches; shares of the three")
    doc["parameter_gradient"] = {"cosine_adversarial_vs_l1_hole": weighted([(w, {"c": c}) for w, c in param_cos])["c"],
                                 **{f"{k}_norm" if not k.endswith("share") else k: v for k, v in weighted(param_norms).items()}}
    doc["critic_score_mean"] = {k: float(torch.cat(v).mean()) for k, v in critic.items()}
    if steps:
        doc["finetune"] = finetune_table(cfg, steps, image, mask, device)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    return _write(out_dir, "stage2_residual", doc, _residual_figure(doc))


def finetune_table(cfg: Config, steps: int, image: Tensor, mask: Tensor, device) -> dict:
    """Each reading of :data:`FINETUNE_READINGS` trained on from Ours' last checkpoint (G, D and
    both optimisers' state, their lr) for ``steps`` steps on the training set (batches in a fixed
    seeded order, the same for every reading), then scored on ``image``/``mask``: whole-image and
    hole PSNR of the composite, mean over images."""
    from .data import training_dataset

    rows = {}
    for name, changes in FINETUNE_READINGS.items():
        c = _with_texture_loss(cfg, **changes)
        recipe, modules, state = _trained_full(c, device)
        optimizers = recipe.optimizers(modules)
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        data = training_dataset(c)
        data.set_epoch(10_000 + int(state["epoch"]))  # masks and flips not seen in the run itself
        order = np.random.default_rng(cfg.seed).permutation(len(data))
        torch.manual_seed(cfg.seed)
        t0, bs = time.perf_counter(), cfg.texture.batch_size
        for s in range(steps):
            idx = [int(order[(s * bs + j) % len(order)]) for j in range(bs)]
            items = [data[i] for i in idx]
            batch = {k: torch.stack([it[k] for it in items]).to(device) for k in ("image", "mask")}
            recipe.train_step(modules, optimizers, batch, int(state["step"]) + s + 1)
        seconds = time.perf_counter() - t0
        modules["G"].eval()
        whole, holes = [], []
        with torch.no_grad():
            for sl in _batches(len(image), cfg.evaluate.batch_size):
                x, m = image[sl].to(device), mask[sl].to(device)
                comp = recipe.generate(modules, x * (1 - m), m)["composite"].cpu()
                whole.append(region_psnr(comp, image[sl], torch.ones_like(mask[sl])))
                holes.append(region_psnr(comp, image[sl], mask[sl]))
        rows[name] = {"changes": changes, "steps": steps, "train_seconds": round(seconds, 1),
                      "psnr": float(np.concatenate(whole).mean()), "hole_psnr": float(np.concatenate(holes).mean())}
        log.info("fine-tune %s: %d steps in %.0f s, PSNR %.3f", name, steps, seconds, rows[name]["psnr"])
    return rows


def _residual_figure(doc: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    a, b, c = fig.subplots(1, 3)
    s1, ours = np.array(doc["per_image"]["hole_psnr_stage1"]), np.array(doc["per_image"]["hole_psnr_ours"])
    a.scatter(s1, ours, s=6, alpha=0.6)
    lo, hi = float(min(s1.min(), ours.min())), float(max(s1.max(), ours.max()))
    a.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    a.set(xlabel="stage 1 hole PSNR (dB)", ylabel="Ours hole PSNR (dB)",
          title=f"Ours below stage 1 on {100 * doc['ours_below_stage1_share']:.0f}% of {doc['images']} images")
    rings = doc["hole_psnr_by_edge_distance"]
    xs = np.arange(len(rings))
    b.bar(xs - 0.2, [r["stage1"] for r in rings.values()], 0.4, label="stage 1")
    b.bar(xs + 0.2, [r["ours"] for r in rings.values()], 0.4, label="Ours")
    b.set_xticks(xs, [k.replace("_or_more", "+") for k in rings])
    b.set_ylim(min(r["stage1"] for r in rings.values()) - 3, None)
    b.set(xlabel="distance to the hole's edge", ylabel="PSNR (dB)", title="hole PSNR by distance to the edge")
    b.legend()
    g = doc["output_gradient"]
    terms = ("perceptual", "adversarial", "l1")
    c.bar(xs[:3] - 0.2, [g[t]["hole_norm"] for t in terms], 0.4, label="in the hole")
    c.bar(xs[:3] + 0.2, [g[t]["outside_norm"] for t in terms], 0.4, label="outside")
    c.set_xticks(xs[:3], terms)
    c.set(ylabel="gradient norm on the output", title="L_T's terms (weighted)")
    c.legend()
    return fig


# ----------------------------------------------------------------------- inversion oracle


def masked_inversion(reconstructor, image: Tensor, mask: Tensor, steps: tuple[int, ...], lr: float = 0.01) -> dict:
    """Optimise the W+ codes from the encoder's with Adam (``lr``) on the squared error of the
    known pixels only (each image's mean over its known elements, summed over images, so each
    image's code follows its own gradient); the generator stays frozen. Returns the encoder's
    output (key 0) and the output after each of ``steps`` (its keys), and the loss per step."""
    with torch.no_grad():
        damaged = image * (1 - mask)
        codes = reconstructor.encode(damaged, mask)
        outputs = {0: reconstructor.synthesise(codes, image.shape[-1]).detach()}
    known = 1 - mask
    count = known.sum((1, 2, 3)) * image.shape[1]
    codes = codes.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([codes], lr=lr)
    losses = []
    for t in range(1, steps[-1] + 1):
        out = reconstructor.synthesise(codes, image.shape[-1])
        loss = (((out - image) * known).square().sum((1, 2, 3)) / count).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if t in steps:
            with torch.no_grad():
                outputs[t] = reconstructor.synthesise(codes, image.shape[-1]).detach()
    return {"outputs": outputs, "losses": losses}


def inversion_oracle(cfg: Config, out_dir: Path = DIAGNOSTICS_DIR, n_images: int | None = None, device="cpu") -> dict[str, Path]:
    """Write ``inversion_oracle.{json,png}`` (module docstring) on the first
    ``diagnostics.inversion_images`` test images with their squares (``n_images`` overrides)."""
    from .classical import inpaint_biharmonic_batch
    from .recipes import load_structure

    d = cfg.diagnostics
    n = d.inversion_images if n_images is None else n_images
    if n == 0:
        return _off(cfg, out_dir, "inversion_oracle", "inversion_images")
    t0 = time.perf_counter()
    image, mask = first_squares(cfg, n)
    recon = load_structure(cfg, device)
    scores = {"encoder": {"psnr": [], "hole_psnr": []}, "biharmonic": {"psnr": [], "hole_psnr": []},
              **{f"inversion_{s}": {"psnr": [], "hole_psnr": []} for s in d.inversion_steps}}
    losses = []
    for sl in _batches(n, cfg.evaluate.batch_size):
        x, m = image[sl].to(device), mask[sl].to(device)
        inv = masked_inversion(recon, x, m, d.inversion_steps, d.inversion_lr)
        losses.append(inv["losses"])
        outs = {"encoder": inv["outputs"][0], **{f"inversion_{s}": inv["outputs"][s] for s in d.inversion_steps},
                "biharmonic": inpaint_biharmonic_batch(x * (1 - m), m)}
        for k, o in outs.items():
            comp = torch.where(m > 0.5, o, x).cpu()
            scores[k]["psnr"].append(region_psnr(comp, image[sl], torch.ones_like(mask[sl])))
            scores[k]["hole_psnr"].append(region_psnr(comp, image[sl], mask[sl]))
    summary = {k: {m: float(np.concatenate(v[m]).mean()) for m in v} for k, v in scores.items()}
    per_image = {k: np.concatenate(v["psnr"]).round(4).tolist() for k, v in scores.items()}
    doc = {"profile": cfg.profile_name, "model": "structure", "test_images": n,
           "masks": "squares (image i: square i % 10)", "steps": list(d.inversion_steps), "lr": d.inversion_lr,
           "objective": "Adam on the W+ codes from the encoder's; squared error on the known pixels only; prior frozen",
           "mean": summary, "known_pixel_loss_first_last_batch": [losses[0][0], losses[0][-1]],
           "per_image_psnr": per_image, "seconds": round(time.perf_counter() - t0, 1)}
    return _write(out_dir, "inversion_oracle", doc, _inversion_figure(doc))


def _inversion_figure(doc: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    steps = [0, *doc["steps"]]
    for ax, metric, title in zip(axes, ("psnr", "hole_psnr"), ("whole image", "hole only")):
        m = doc["mean"]
        ax.plot(steps, [m["encoder"][metric], *(m[f"inversion_{s}"][metric] for s in doc["steps"])], marker="o",
                label="W+ inversion on the known pixels (0: encoder)")
        ax.axhline(m["biharmonic"][metric], color="k", ls="--", lw=0.9, label="biharmonic")
        ax.set(xlabel="Adam steps", ylabel="PSNR (dB)", title=f"{title}, {doc['test_images']} test images")
    axes[0].legend(fontsize=8)
    return fig
