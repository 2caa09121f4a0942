"""Training recipes of the baselines (PAPER.md sec. 5) for the suite's one training loop.

Both baselines train with the PConv loss family (valid 1, hole 6, perceptual 0.05, style 120,
TV 0.1; ``losses.pconv`` / ``losses.rfr``) and Adam, then a fine-tuning phase with the encoder's
batch-norm frozen at a lower learning rate (Liu et al. 2018: 2e-4, then 5e-5). Fine-tuning starts
at the absolute step ``finetune_from_step``, so a run extended to a larger ``max_steps`` is the
same run as one trained to that budget without a break.
"""

from __future__ import annotations

import torch

from faceinpaint.config import Config
from faceinpaint.recipes import InpainterRecipe, damaged
from faceinpaint.training import unwrap

from .losses import LossWeights, inpainting_loss
from .pconv import PConvInpainter
from .rfr import RFRInpainter


class PoolFeatures(torch.nn.Module):
    """Liu et al.'s (and RFR's) perceptual and style layers on VGG16: pool1, pool2, pool3, the
    2x2 max pools of relu1_2, relu2_2, relu3_3 (:class:`~faceinpaint.pretrained.feature_nets.VGG16Features`
    returns the relu maps). A substitute backbone (EfficientNet-Lite0) is used with its own
    levels, unchanged."""

    def __init__(self, vgg: torch.nn.Module):
        super().__init__()
        self.vgg, self.name = vgg, "vgg16-pool1-3"

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [torch.nn.functional.max_pool2d(f, 2) for f in self.vgg(images)[:3]]


def baseline_features(cfg: Config) -> torch.nn.Module:
    from faceinpaint.pretrained import perceptual_backbone

    net = perceptual_backbone(cfg.backbones.perceptual)
    return PoolFeatures(net) if getattr(net, "name", "") == "vgg16" else net


def build_baseline(cfg: Config, name: str) -> torch.nn.Module:
    if name == "pconv":
        return PConvInpainter(cfg.resolution, cfg.pconv.base_width)
    if name == "rfr":
        return RFRInpainter(cfg.resolution, cfg.rfr.base_width, cfg.rfr.recurrences)
    raise ValueError(f"unknown baseline {name!r}; expected pconv or rfr")


class BaselineRecipe(InpainterRecipe):
    trainable = ("net",)

    def __init__(self, cfg: Config, name: str):
        self.cfg, self.name = cfg, name
        self.p = getattr(cfg, name)
        self.weights = LossWeights(**getattr(cfg.losses, name).model_dump())
        self.finetune_from = self.p.finetune_from_step

    def build(self, device):
        return {"net": build_baseline(self.cfg, self.name).to(device), "features": baseline_features(self.cfg).to(device)}

    def optimizers(self, modules):
        return {"net": torch.optim.Adam(modules["net"].parameters(), lr=self.p.lr)}

    def train_step(self, modules, optimizers, batch, step):
        image, mask, image_damaged = damaged(batch)
        net = modules["net"]
        net.train()
        finetune = step >= self.finetune_from
        # under DDP the frozen parameters keep requires_grad (its reducer expects their
        # gradients) and lose their gradients before the step, below
        unwrap(net).set_finetune(finetune, keep_requires_grad=net is not unwrap(net))
        for group in optimizers["net"].param_groups:
            group["lr"] = self.p.finetune_lr if finetune else self.p.lr
        out = net(image_damaged, mask)
        terms = inpainting_loss(out["output"], out["composite"], image, mask, modules["features"], self.weights)
        optimizers["net"].zero_grad(set_to_none=True)
        terms["total"].backward()
        for p in unwrap(net).frozen_parameters():
            p.grad = None
        optimizers["net"].step()
        return {**{k: v.detach() for k, v in terms.items()}, "finetune": float(finetune)}

    def inference(self, modules):
        return modules["net"], [modules["net"]]

    def sample(self, modules, batch):
        image, mask, image_damaged = damaged(batch)
        net = modules["net"]
        was_training = net.training
        net.eval()
        out = net(image_damaged, mask)
        net.train(was_training)
        return [image_damaged, out["composite"], image]

    def export(self, modules) -> dict:
        return {"net": unwrap(modules["net"]).state_dict()}


def load_baseline_inpainter(cfg: Config, name: str, device="cpu"):
    """The registry's loader (:mod:`faceinpaint.models`): the trained baseline of ``name``."""
    from faceinpaint.recipes import _read_model_file

    return load_baseline(cfg, name, _read_model_file(cfg, name)["state"], device)


def load_baseline(cfg: Config, name: str, state: dict, device="cpu"):
    """A trained baseline as an inpainter ``f(image_damaged, mask) -> dict``, eval mode."""
    net = build_baseline(cfg, name)
    net.load_state_dict(state["net"])
    return net.eval().requires_grad_(False).to(device)
