"""The model registry: every model of the suite, once.

Each entry says what a model is called (CLI and folder name, display name in the report), which
``params.yaml`` sections it reads, which trained models it loads, how it trains (its recipe) and
how a trained one inpaints. Every list of model names in the suite (CLI choices, stage
identities, evaluation facts, report tables, the ``dvc.yaml`` matrices, tests and benchmarks)
comes from here or is checked against it (``tests/test_models.py``).

Recipes and inference loaders are named as ``"module:attribute"`` and imported on use, so that
this module imports nothing heavy and the baselines (``baselines/``) plug in without the core
package importing them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

_COMMON = ("seed", "profile", "data")
_INPAINTER = (*_COMMON, "masks", "resolution")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display: str
    """Name in the report's tables and figures."""
    section: str | None
    """The profile section with its architecture and budget (``texture`` is shared by three)."""
    reads: tuple[str, ...]
    """params.yaml paths its training reads (profile keys without ``profiles.<profile>.``)."""
    upstream: tuple[str, ...] = ()
    """Trained models its training loads."""
    recipe: str | None = None
    """``module:Class`` of its training recipe (``Class(cfg, name)`` or ``Class(cfg)``); None: not trained."""
    loader: str | None = None
    """``module:function`` of ``(cfg, name, device) -> inpaint(image_damaged, mask) -> dict``; None: not an inpainter."""
    export_file: str = "model.pt"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.recipe is not None

    @property
    def inpaints(self) -> bool:
        return self.loader is not None


def _texture(name: str, display: str, attention: tuple[int, ...], structure: bool) -> ModelSpec:
    return ModelSpec(name, display, "texture",
                     (*_INPAINTER, "texture", "losses.texture", "learning_rates", "backbones"),
                     ("structure",) if structure else (), "faceinpaint.recipes:TextureRecipe",
                     "faceinpaint.recipes:load_texture_inpainter",
                     extras={"attention_levels": attention, "uses_structure": structure})


def _baseline(name: str, display: str) -> ModelSpec:
    return ModelSpec(name, display, name, (*_INPAINTER, name, f"losses.{name}", "backbones"), (),
                     "baselines.recipes:BaselineRecipe", "baselines.recipes:load_baseline_inpainter")


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("stylegan", "StyleGAN2 prior", "stylegan", (*_COMMON, "resolution", "stylegan"), (),
              "faceinpaint.recipes:StyleGANRecipe", None, export_file="stylegan2.pt"),
    ModelSpec("structure", "Stage 1 (structure)", "structure",
              (*_INPAINTER, "structure", "losses.structure", "learning_rates", "backbones"), ("stylegan",),
              "faceinpaint.recipes:StructureRecipe", "faceinpaint.recipes:load_structure_inpainter"),
    _texture("full", "Ours", (4, 5, 6), True),
    _texture("variant1", "Variant 1", (6,), False),
    _texture("variant2", "Variant 2", (6,), True),
    _baseline("pconv", "PConv"),
    _baseline("rfr", "RFR"),
    ModelSpec("biharmonic", "inpaint_biharmonic", None, (), (), None, "faceinpaint.classical:biharmonic_inpainter"),
)}

TRAINED = tuple(m for m, s in MODELS.items() if s.trains)
INPAINTERS = tuple(m for m, s in MODELS.items() if s.inpaints)
TEXTURE_MODELS = tuple(m for m, s in MODELS.items() if s.section == "texture")


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name]


def resolve(path: str) -> Callable:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def upstream_chain(name: str) -> list[str]:
    """Every trained model ``name`` depends on, nearest first (``full`` -> structure, stylegan)."""
    out: list[str] = []
    for up in spec(name).upstream:
        out += [up, *(m for m in upstream_chain(up) if m not in out)]
    return out


def training_stages(name: str) -> tuple[str, ...]:
    """The training runs behind an evaluated model, upstream first (reported beside its numbers)."""
    own = (name,) if spec(name).trains else ()
    return (*reversed(upstream_chain(name)), *own)
