"""One recipe per model for the one training loop (:mod:`faceinpaint.training`), and the
loader that turns a trained model directory into an inpainter for evaluation and inference.

Models and what they are (PAPER.md):

* ``stylegan``  — the StyleGAN2 prior (sec. 2, sec. 8: trained here on the train split);
* ``structure`` — the pSp structure reconstructor driving the frozen prior (sec. 2);
* ``full``      — structure + texture generator, attention scores from levels 4-6 (sec. 3, 4);
* ``variant2``  — structure + texture generator, scores from level 6 only (sec. 4);
* ``variant1``  — texture generator alone on the damaged image, scores from level 6 (sec. 4);
* ``pconv``, ``rfr`` — the baselines (sec. 5), in ``baselines/``.

Every trained model directory holds ``model.pt``: ``{"model": name, "profile": ...,
"resolution": R, "config": {...}, "state": {module: state_dict}}`` (written by
:func:`export_model` at the end of training), which :func:`load_inpainter` reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import Config
from .data import identity_box_fraction
from .models import INPAINTERS, TEXTURE_MODELS, resolve, spec
from .training import EmaSpec, Recipe, distributed_mean, unwrap

MODELS_DIR = Path("artifacts/models")
MODEL_FILE = "model.pt"
TEXTURE_ATTENTION = {m: spec(m).extras["attention_levels"] for m in TEXTURE_MODELS}
USES_STRUCTURE = {m: spec(m).extras["uses_structure"] for m in TEXTURE_MODELS}


class ModelMissingError(FileNotFoundError):
    """A model that a stage or command needs was never trained (or its file is damaged)."""


def damaged(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, mask, image * (1 - mask))`` of a batch (docs/CONVENTIONS.md)."""
    image, mask = batch["image"], batch["mask"]
    return image, mask, image * (1 - mask)


class InpainterRecipe(Recipe):
    """A recipe whose model inpaints: its learning-curve points are the evaluation's metrics on
    the first ``evaluate.curve_images`` test images with their squares
    (:class:`faceinpaint.evaluate.CurveEvaluator`), with the model in eval mode."""

    cfg: Config
    _curve = None

    def inference(self, modules: Mapping[str, nn.Module]) -> tuple[Callable, list[nn.Module]]:
        """``(f(image_damaged, mask) -> dict with "composite", modules to put in eval mode)``."""
        raise NotImplementedError

    def curve_point(self, modules):
        n = self.cfg.evaluate.curve_images
        if n == 0:
            return None
        inpaint, nets = self.inference(modules)
        if self._curve is None:
            from .evaluate import CurveEvaluator

            self._curve = CurveEvaluator(self.cfg, n, next(nets[0].parameters()).device)
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        try:
            return self._curve(inpaint)
        finally:
            for m, mode in zip(nets, modes):
                m.train(mode)


# ------------------------------------------------------------------------------- stylegan


class StyleGANRecipe(Recipe):
    """StyleGAN2 prior (Karras et al. 2020): non-saturating logistic loss, lazy R1 on D and lazy
    path-length regularisation on G, style mixing, EMA generator ``G_ema``."""

    name = "stylegan"
    trainable = ("G", "D")
    double_backward = ("G", "D")  # path-length regularisation, R1

    def __init__(self, cfg: Config, name: str = "stylegan"):
        self.cfg, self.p = cfg, cfg.stylegan
        self.ema = {"G_ema": EmaSpec("G", half_life_images=self.p.ema_kimg * 1000, rampup_ratio=0.05)}
        self.mean_path_length = 0.0
        self._quality = None

    def build(self, device):
        from .stylegan2 import Discriminator, Generator

        p, res = self.p, self.cfg.resolution
        return {
            "G": Generator(res, p.style_dim, p.n_mlp, p.channel_multiplier, p.channel_max).to(device),
            "D": Discriminator(res, p.channel_multiplier, p.channel_max).to(device),
        }

    def optimizers(self, modules):
        p = self.p
        g_ratio = p.g_reg_every / (p.g_reg_every + 1)
        d_ratio = p.d_reg_every / (p.d_reg_every + 1)
        return {
            "G": torch.optim.Adam(modules["G"].parameters(), lr=p.lr * g_ratio, betas=(0.0, 0.99**g_ratio)),
            "D": torch.optim.Adam(modules["D"].parameters(), lr=p.lr * d_ratio, betas=(0.0, 0.99**d_ratio)),
        }

    def train_step(self, modules, optimizers, batch, step):
        from .stylegan2 import d_logistic_loss, d_r1_loss, g_nonsaturating_loss, g_path_regularize, mixing_noise

        from .augment import diff_augment, parse_policy, r1_heuristic, random_xflip

        p = self.p
        G, D = modules["G"], modules["D"]
        real = batch["image"]
        n = real.shape[0]
        G.train(), D.train()
        logs: dict[str, Any] = {}
        policy = parse_policy(p.diffaugment)
        aug = (lambda x: diff_augment(x, policy)) if policy else (lambda x: x)  # noqa: E731
        if p.xflip:
            real = random_xflip(real)
        r1_weight = r1_heuristic(self.cfg.resolution, self.cfg.stylegan.batch_size) if p.r1 == "auto" else p.r1

        # discriminator
        unwrap(G).requires_grad_(False), unwrap(D).requires_grad_(True)
        fake, _ = G(mixing_noise(n, p.style_dim, p.mixing, real.device))
        d_loss = d_logistic_loss(D(aug(real)), D(aug(fake.detach())))
        optimizers["D"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["D"].step()
        logs["d_loss"] = d_loss.detach()
        if r1_weight > 0 and step % p.d_reg_every == 0:
            real_req = aug(real).detach().requires_grad_(True)  # the penalty on what D sees
            real_pred = D(real_req)
            r1 = d_r1_loss(real_pred, real_req)
            optimizers["D"].zero_grad(set_to_none=True)
            (r1_weight / 2 * r1 * p.d_reg_every + 0 * real_pred[0]).sum().backward()
            optimizers["D"].step()
            logs["r1"] = r1.detach()

        # generator (D is not synchronised in G's pass: its gradients are not used)
        unwrap(G).requires_grad_(True), unwrap(D).requires_grad_(False)
        fake, _ = G(mixing_noise(n, p.style_dim, p.mixing, real.device))
        g_loss = g_nonsaturating_loss(unwrap(D)(aug(fake)))
        optimizers["G"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["G"].step()
        logs["g_loss"] = g_loss.detach()
        if p.path_regularize > 0 and step % p.g_reg_every == 0:
            path_batch = max(1, n // p.path_batch_shrink)
            fake, latents = G(mixing_noise(path_batch, p.style_dim, p.mixing, real.device), return_latents=True)
            penalty, path_mean, lengths = g_path_regularize(fake, latents, self.mean_path_length)
            # one running mean over every process's path lengths (so that every process, and the
            # checkpoint rank 0 writes, hold the same one); in one process the value itself
            self.mean_path_length = distributed_mean(path_mean)
            optimizers["G"].zero_grad(set_to_none=True)
            (p.path_regularize * p.g_reg_every * penalty + 0 * fake[0, 0, 0, 0]).backward()
            optimizers["G"].step()
            logs["path_penalty"] = penalty.detach()
            logs["path_length"] = lengths.mean().detach()
        unwrap(D).requires_grad_(True)
        return logs

    def sample(self, modules, batch):
        g = torch.Generator().manual_seed(1234)
        z = torch.randn(len(batch["image"]), self.p.style_dim, generator=g).to(batch["image"].device)
        return [batch["image"], modules["G_ema"]([z], randomize_noise=False)[0]]

    def curve_point(self, modules):
        """Both FDs of ``G_ema``'s samples against the first ``curve_samples`` test faces."""
        if self._quality is None:
            from .prior_quality import PriorQuality

            self._quality = PriorQuality(self.cfg, self.p.curve_samples, next(modules["G_ema"].parameters()).device)
        return self._quality.check(modules["G_ema"])[0]

    def state_dict(self):
        return {"mean_path_length": float(self.mean_path_length)}

    def load_state_dict(self, state):
        self.mean_path_length = float(state.get("mean_path_length", 0.0))

    def export(self, modules) -> dict:
        """rosinality's checkpoint layout (``g_ema``, ``latent_avg``, ``g``, ``d``)."""
        g_ema = modules["G_ema"]
        torch.manual_seed(0)
        return {
            "g_ema": g_ema.state_dict(),
            "latent_avg": g_ema.mean_latent(4096)[0].detach(),
            "g": unwrap(modules["G"]).state_dict(),
            "d": unwrap(modules["D"]).state_dict(),
        }


def stylegan_checkpoint_path(cfg: Config) -> Path:
    """The prior the structure reconstructor uses: ``stylegan.checkpoint`` if set (a standard
    rosinality checkpoint, e.g. FFHQ), else the one this pipeline trained."""
    return Path(cfg.stylegan.checkpoint) if cfg.stylegan.checkpoint else MODELS_DIR / "stylegan" / "stylegan2.pt"


def load_prior(cfg: Config, device) -> tuple[nn.Module, torch.Tensor]:
    """Frozen StyleGAN2 generator and its ``latent_avg`` (PAPER.md sec. 2)."""
    from .stylegan2 import generator_from_checkpoint, load_rosinality_checkpoint

    path = stylegan_checkpoint_path(cfg)
    if not path.is_file():
        raise ModelMissingError(f"{path}: StyleGAN2 checkpoint missing (run `dvc repro stylegan`, or set stylegan.checkpoint)")
    ckpt = load_rosinality_checkpoint(path)
    p = cfg.stylegan
    size = p.checkpoint_size or cfg.resolution
    g = generator_from_checkpoint(ckpt, size, p.channel_multiplier, p.channel_max, p.style_dim, p.n_mlp).to(device)
    g.eval().requires_grad_(False)
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        torch.manual_seed(0)
        latent_avg = g.mean_latent(4096)[0]
    return g, latent_avg.to(device)


# ------------------------------------------------------------------------------ texture


class TextureRecipe(InpainterRecipe):
    """Texture generator with WGAN-GP (PAPER.md sec. 3-4): full model, variant 1, variant 2.

    Critic: ``mean D(fake) - mean D(real) + 10 GP``; generator: ``10 perceptual + adversarial +
    100 L1``. Adam with ``learning_rates.texture`` and betas (0.5, 0.9) (Gulrajani et al. 2017),
    lr x0.96 every ``lr_decay_every`` steps (paper: every 100,000). Stage 1 (for ``full`` and
    ``variant2``) is the trained structure reconstructor, frozen.
    """

    trainable = ("G", "D")
    double_backward = ("D",)  # the WGAN gradient penalty

    def __init__(self, cfg: Config, name: str):
        if name not in TEXTURE_ATTENTION:
            raise ValueError(f"unknown texture model {name!r}; expected one of {sorted(TEXTURE_ATTENTION)}")
        self.cfg, self.p, self.name = cfg, cfg.texture, name

    def build(self, device):
        from .pretrained import perceptual_backbone
        from .texture import TextureCritic, TextureGenerator

        p, res = self.p, self.cfg.resolution
        modules = {
            "G": TextureGenerator(res, p.base_width, p.max_width, TEXTURE_ATTENTION[self.name], p.softmax_scale).to(device),
            "D": TextureCritic(res, p.critic_width).to(device),
            "perceptual": perceptual_backbone(self.cfg.backbones.perceptual).to(device),
        }
        if USES_STRUCTURE[self.name]:
            modules["structure"] = load_structure(self.cfg, device)
        return modules

    def optimizers(self, modules):
        lr = self.cfg.learning_rates.lr("texture")
        return {
            "G": torch.optim.Adam(modules["G"].parameters(), lr=lr, betas=(0.5, 0.9)),
            "D": torch.optim.Adam(modules["D"].parameters(), lr=lr, betas=(0.5, 0.9)),
        }

    def schedulers(self, optimizers):
        return {k: torch.optim.lr_scheduler.StepLR(o, self.p.lr_decay_every, self.p.lr_decay) for k, o in optimizers.items()}

    def generate(self, modules, image_damaged, mask):
        return texture_forward(modules["G"], modules.get("structure"), image_damaged, mask)

    def inference(self, modules):
        return (lambda x, m: self.generate(modules, x, m)), [modules["G"]]

    def train_step(self, modules, optimizers, batch, step):
        from .losses import texture_loss
        from .texture import wgan_critic_loss

        w = self.cfg.losses.texture
        G, D = modules["G"], modules["D"]
        image, mask, image_damaged = damaged(batch)
        G.train(), D.train()
        out = self.generate(modules, image_damaged, mask)

        unwrap(D).requires_grad_(True)
        for _ in range(self.p.critic_steps):
            c = wgan_critic_loss(D, image, out["composite"].detach(), mask, w.gradient_penalty)
            optimizers["D"].zero_grad(set_to_none=True)
            c["total"].backward()
            optimizers["D"].step()

        unwrap(D).requires_grad_(False)
        # the reading of L_T in `losses.texture` (faceinpaint.losses.texture_loss; defaults: the stored models')
        g = texture_loss(out["output"], image, mask, modules["perceptual"], unwrap(D), w)
        optimizers["G"].zero_grad(set_to_none=True)
        g["total"].backward()
        optimizers["G"].step()
        unwrap(D).requires_grad_(True)
        return {
            "g_total": g["total"].detach(), "l1": g["l1"].detach(), "perceptual": g["perceptual"].detach(),
            "adversarial": g["adversarial"].detach(), "d_total": c["total"].detach(),
            "gradient_penalty": c["gradient_penalty"].detach(),
            "wasserstein": (c["critic_real"] - c["critic_fake"]).detach(),
        }

    def sample(self, modules, batch):
        image, mask, image_damaged = damaged(batch)
        out = self.generate(modules, image_damaged, mask)
        return [image_damaged, out["composite"], image]

    def export(self, modules) -> dict:
        return {"G": unwrap(modules["G"]).state_dict()}


def texture_forward(G: nn.Module, structure: nn.Module | None, image_damaged, mask) -> dict:
    """Two-stage forward (PAPER.md sec. 1): stage 1 fills the hole, its composite goes into the
    texture generator whose residual is added to the stage-1 result. Without ``structure``
    (variant 1) the damaged image is the input and the base."""
    if structure is None:
        return G(image_damaged, mask)
    with torch.no_grad():
        s1 = structure(image_damaged, mask)
    out = G(s1["composite"], mask, stage1=s1["output"])
    return {**out, "stage1": s1["output"]}


# ---------------------------------------------------------------------------- structure


class StructureRecipe(InpainterRecipe):
    """pSp structure reconstructor (PAPER.md sec. 2): encoder trained, StyleGAN2 prior frozen.

    L_S = L2 + 0.8 LPIPS + 0.1 ID + 6 hole + 1 valid (``losses.structure``); Adam with
    ``learning_rates.structure`` (the paper's "10e-3", read as 1e-3), constant.
    """

    name = "structure"
    trainable = ("encoder",)

    def __init__(self, cfg: Config, name: str = "structure"):
        self.cfg, self.p = cfg, cfg.structure

    def build_reconstructor(self, device) -> nn.Module:
        from .psp import build_structure_reconstructor

        generator, latent_avg = load_prior(self.cfg, device)
        model = build_structure_reconstructor(generator, latent_avg, self.cfg.resolution,
                                              self.p.backbone_blocks, self.p.backbone_widths)
        return model.to(device)

    def build(self, device):
        from .pretrained import IdentityEmbedder, load_face_recognition, lpips_metric

        reconstructor = self.build_reconstructor(device)
        identity = IdentityEmbedder(load_face_recognition(self.cfg.backbones.face_recognition), identity_box_fraction(self.cfg))
        return {
            "encoder": reconstructor.encoder,
            "reconstructor": reconstructor,
            "lpips": lpips_metric(self.cfg.backbones.lpips).to(device),
            "identity": identity.to(device),
        }

    def optimizers(self, modules):
        return {"encoder": torch.optim.Adam(modules["encoder"].parameters(), lr=self.cfg.learning_rates.lr("structure"))}

    def forward(self, modules, image_damaged, mask) -> dict:
        recon = modules["reconstructor"]
        # the encoder is called through modules["encoder"] so that DDP synchronises its gradients
        codes = modules["encoder"](torch.cat([image_damaged, mask], dim=1)) + recon.latent_avg
        output = recon.synthesise(codes, image_damaged.shape[-1])
        return {"output": output, "composite": mask * output + (1 - mask) * image_damaged}

    def inference(self, modules):
        return (lambda x, m: self.forward(modules, x, m)), [modules["reconstructor"]]

    def train_step(self, modules, optimizers, batch, step):
        from .psp import structure_loss

        image, mask, image_damaged = damaged(batch)
        modules["reconstructor"].train()
        out = self.forward(modules, image_damaged, mask)
        terms = structure_loss(out["output"], image, mask, modules["lpips"], modules["identity"],
                               self.cfg.losses.structure.model_dump())
        optimizers["encoder"].zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizers["encoder"].step()
        return {k: v.detach() for k, v in terms.items()}

    def sample(self, modules, batch):
        image, mask, image_damaged = damaged(batch)
        modules["reconstructor"].eval()
        out = self.forward(modules, image_damaged, mask)
        return [image_damaged, out["output"], out["composite"], image]

    def export(self, modules) -> dict:
        return {"encoder": unwrap(modules["encoder"]).state_dict()}


# ---------------------------------------------------------------------------- registry


def make_recipe(cfg: Config, name: str) -> Recipe:
    """The training recipe of a trained model of the registry (:mod:`faceinpaint.models`)."""
    entry = spec(name)
    if not entry.trains:
        raise ValueError(f"model {name!r} is not trained")
    return resolve(entry.recipe)(cfg, name)


def export_model(cfg: Config, recipe: Recipe, modules: Mapping[str, nn.Module], out_dir: Path) -> Path:
    """Write the trained model's inference weights (``model.pt``) atomically."""
    payload = {"model": recipe.name, "profile": cfg.profile_name, "resolution": cfg.resolution,
               "state": recipe.export(modules)}
    path = out_dir / spec(recipe.name).export_file
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload if recipe.name != "stylegan" else payload["state"], tmp)
    os.replace(tmp, path)  # readers never see a half-written model file
    return path


def _read_model_file(cfg: Config, name: str) -> dict:
    path = MODELS_DIR / name / MODEL_FILE
    if not path.is_file():
        raise ModelMissingError(f"{path}: model {name!r} has not been trained (run `dvc repro` or `faceinpaint train {name}`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ModelMissingError(f"{path}: cannot read model file ({err}); re-run `faceinpaint train {name}`") from None
    if payload.get("resolution") != cfg.resolution:
        raise ModelMissingError(f"{path}: trained at {payload.get('resolution')}x{payload.get('resolution')}, but the "
                                f"{cfg.profile_name} profile is {cfg.resolution}x{cfg.resolution}; retrain it")
    return payload


def load_structure(cfg: Config, device) -> nn.Module:
    """The trained structure reconstructor, frozen, in eval mode."""
    model = StructureRecipe(cfg).build_reconstructor(device)
    model.encoder.load_state_dict(_read_model_file(cfg, "structure")["state"]["encoder"])
    return model.eval().requires_grad_(False)


Inpainter = Callable[[torch.Tensor, torch.Tensor], dict]


def load_inpainter(cfg: Config, name: str, device="cpu") -> Inpainter:
    """``f(image_damaged, mask) -> dict(output, composite, ...)`` for any inpainter of the
    registry (the trained ones and the classical ``biharmonic`` fill)."""
    entry = spec(name)
    if not entry.inpaints:
        raise ValueError(f"model {name!r} does not inpaint; expected one of {', '.join(INPAINTERS)}")
    return resolve(entry.loader)(cfg, name, device)


def load_structure_inpainter(cfg: Config, name: str, device="cpu") -> Inpainter:
    return load_structure(cfg, device)


def load_texture_inpainter(cfg: Config, name: str, device="cpu") -> Inpainter:
    from .texture import TextureGenerator

    p = cfg.texture
    G = TextureGenerator(cfg.resolution, p.base_width, p.max_width, TEXTURE_ATTENTION[name], p.softmax_scale)
    G.load_state_dict(_read_model_file(cfg, name)["state"]["G"])
    G.eval().requires_grad_(False).to(device)
    structure = load_structure(cfg, device) if USES_STRUCTURE[name] else None
    return lambda x, m: texture_forward(G, structure, x, m)
