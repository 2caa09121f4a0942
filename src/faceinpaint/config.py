"""Loading and validating ``params.yaml``.

``params.yaml`` has common sections (data, masks, loss weights read from the paper, backbones)
and one block per compute profile under ``profiles``; ``profile`` picks the active one
(``dvc exp run -S profile=smoke``). :func:`load_config` merges the two into a :class:`Config`
and fails at load time, naming the key path, on unknown keys, wrong types or impossible values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILES = ("smoke", "cpu", "paper")


class ConfigError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MIN_RESOLUTION = 32
"""Smallest image side at which every model of the suite builds and trains. Below it: the pSp
encoder (structure stage, hence ``structure``, ``full``, ``variant2``) takes its coarse styles
from a pyramid map of side resolution / 16, which its map2style heads need at least 2x2
(``faceinpaint.psp.GradualStyleEncoder``); RFR's knowledge-consistent attention runs on a map of
side resolution / 8, at least 4x4 (``baselines.rfr.MIN_RESOLUTION``). StyleGAN2, the texture
models and PConv would build at 16."""
MAX_RESOLUTION = 1024
"""Largest side: StyleGAN2's channel table (``faceinpaint.stylegan2.channel_widths``) ends at 1024."""


def check_resolution(value: int) -> int:
    """The one check of the profile's image side, at load: a power of two in
    ``MIN_RESOLUTION .. MAX_RESOLUTION``. The models' constructors guard only their own
    structural limits (for callers that build them directly); every one of their ranges
    contains this one."""
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION or value & (value - 1):
        raise ValueError(
            f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {value}: "
            f"{MIN_RESOLUTION} is the smallest side every model trains at (the pSp encoder's coarsest "
            f"pyramid map, resolution/16, must be at least 2x2, and RFR's attention map, resolution/8, "
            f"at least 4x4), {MAX_RESOLUTION} the largest StyleGAN2 has channel widths for")
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to one level with dotted keys: ``{"a": {"b": 1}, "c": [2]}`` ->
    ``{"a.b": 1, "c": [2]}`` (leaves, lists included, unchanged; insertion order kept).
    The one flattening helper: MLflow params here, metric files in :mod:`faceinpaint.regression`."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------- common


class DataParams(_Strict):
    source: str = "data/celeba"
    """Folder with ``train/`` and ``test/`` subfolders of face images (searched recursively;
    the parent folder of a file is its identity label). Real CelebA-HQ plugs in here."""
    crop_box: tuple[int, int, int, int] | None = (19, 59, 159, 199)
    """(x0, y0, x1, y1) square face crop in source pixels; ``None`` = centred square."""
    identity_box: tuple[int, int, int, int] | None = (33, 80, 145, 192)
    """Crop box (source pixels) on which the face-recognition network works best; mapped into
    the prepared crop for the ID loss and metric. ``None`` = the whole prepared image."""
    on_bad_file: Literal["error", "skip"] = "error"
    max_train_images: int | None = Field(default=None, ge=1)
    max_test_images: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _boxes(self) -> "DataParams":
        for name in ("crop_box", "identity_box"):
            box = getattr(self, name)
            if box is not None and not (box[2] > box[0] >= 0 and box[3] > box[1] >= 0):
                raise ValueError(f"{name} must be (x0, y0, x1, y1) with x1 > x0 >= 0 and y1 > y0 >= 0, got {box}")
        if self.crop_box is not None and self.crop_box[2] - self.crop_box[0] != self.crop_box[3] - self.crop_box[1]:
            raise ValueError(f"crop_box must be square, got {self.crop_box}")
        return self


class MaskParams(_Strict):
    irregular_source: str = "data/masks/irregular"
    irregular_bins: int = Field(default=6, ge=1)
    irregular_per_bin_file: int = Field(default=2000, ge=1)
    """Files per area bin in the source set (they are stored in bin order)."""
    train_irregular_prob: float = Field(default=0.25, ge=0.0, le=1.0)
    """Probability that a training sample gets an irregular mask instead of a random square."""
    square_min_frac: float = Field(default=0.125, gt=0.0, lt=1.0)
    square_max_frac: float = Field(default=0.25, gt=0.0, lt=1.0)


class StructureLoss(_Strict):
    """PAPER.md sec. 2: L_S = L2 + 0.8 LPIPS + 0.1 ID + 6 hole + 1 valid."""

    l2: float = Field(default=1.0, ge=0)
    lpips: float = Field(default=0.8, ge=0)
    id: float = Field(default=0.1, ge=0)
    hole: float = Field(default=6.0, ge=0)
    valid: float = Field(default=1.0, ge=0)


class TextureLoss(_Strict):
    """PAPER.md sec. 3: L_T = 10 perceptual + adversarial + 100 L1; WGAN-GP weight 10.

    How the text is read (:func:`faceinpaint.losses.texture_loss`): ``l1_reduction`` ``mean``
    (per element) or ``sum`` (``||I_gt - I_out||_1`` per image, as the norm is written);
    ``l1_region`` ``output`` (raw output, every pixel), ``composite`` or ``hole``;
    ``perceptual_region`` ``output`` or ``composite``. The defaults are the reading the stored
    models were trained with. Critic updates per step: ``texture.critic_steps`` (profile)."""

    perceptual: float = Field(default=10.0, ge=0)
    adversarial: float = Field(default=1.0, ge=0)
    l1: float = Field(default=100.0, ge=0)
    gradient_penalty: float = Field(default=10.0, ge=0)
    l1_reduction: Literal["mean", "sum"] = "mean"
    l1_region: Literal["output", "composite", "hole"] = "output"
    perceptual_region: Literal["output", "composite"] = "output"

    @model_validator(mode="after")
    def _one_name_per_reading(self) -> "TextureLoss":
        if self.l1_region == "hole" and self.l1_reduction == "sum":
            raise ValueError("l1_region 'hole' with l1_reduction 'sum' is the composite's sum of absolute errors; "
                             "write l1_region: composite")
        return self


class PConvLoss(_Strict):
    """PAPER.md sec. 5 (Liu et al. 2018): valid 1, hole 6, perceptual 0.05, style 120, tv 0.1."""

    valid: float = Field(default=1.0, ge=0)
    hole: float = Field(default=6.0, ge=0)
    perceptual: float = Field(default=0.05, ge=0)
    style: float = Field(default=120.0, ge=0)
    tv: float = Field(default=0.1, ge=0)


class LossParams(_Strict):
    structure: StructureLoss = StructureLoss()
    texture: TextureLoss = TextureLoss()
    pconv: PConvLoss = PConvLoss()
    rfr: PConvLoss = PConvLoss(style=120.0, perceptual=0.05, hole=6.0, valid=1.0, tv=0.1)


class LearningRates(_Strict):
    """The paper writes "10e-3" (structure) and "10e-4" (texture). ``reading: corrected`` uses
    1e-3 / 1e-4, ``reading: literal`` 1e-2 / 1e-3 (PAPER.md sec. 6a)."""

    reading: Literal["corrected", "literal"] = "corrected"
    structure: dict[Literal["corrected", "literal"], float] = {"corrected": 1e-3, "literal": 1e-2}
    texture: dict[Literal["corrected", "literal"], float] = {"corrected": 1e-4, "literal": 1e-3}

    def lr(self, stage: Literal["structure", "texture"]) -> float:
        return getattr(self, stage)[self.reading]


class BackboneParams(_Strict):
    """Pretrained feature networks. ``auto`` takes the standard one (VGG16 / AlexNet /
    Inception) when its weights are in the torch hub cache, else EfficientNet-Lite0."""

    perceptual: Literal["auto", "vgg16", "efficientnet_lite0"] = "auto"
    lpips: Literal["auto", "alex", "vgg", "efficientnet_lite0"] = "auto"
    fid: Literal["auto", "inception", "efficientnet_lite0"] = "auto"
    face_recognition: str = "data/weights/faceapi-recognition"


# ---------------------------------------------------------------------------------- profile


class TrainBudget(_Strict):
    """How long a training stage runs; the first limit reached ends it. Budgets only grow a
    run: re-running with a larger budget continues from the last checkpoint."""

    batch_size: int = Field(default=8, ge=1)
    max_steps: int = Field(default=1000, ge=0)
    max_minutes: float | None = Field(default=None, gt=0)
    log_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    sample_every: int = Field(default=500, ge=1)
    num_workers: int = Field(default=0, ge=0)


class StyleGANParams(TrainBudget):
    checkpoint: str | None = None
    """Path to a rosinality-format checkpoint (e.g. FFHQ); when set, the structure stage uses it
    as its prior instead of the one this pipeline trains."""
    checkpoint_size: int | None = Field(default=None, ge=8)
    """Output side of that checkpoint's generator (e.g. 1024 for FFHQ); ``None`` = resolution.
    Images are resized to the profile's resolution."""
    style_dim: int = Field(default=512, ge=8)
    n_mlp: int = Field(default=8, ge=1)
    channel_multiplier: int = Field(default=2, ge=1)
    channel_max: int = Field(default=512, ge=8)
    lr: float = Field(default=0.002, gt=0)
    r1: float | Literal["auto"] = 10.0
    """R1 weight gamma; ``auto``: StyleGAN2-ADA's small-data heuristic ``0.0002 * res^2 / batch``."""
    diffaugment: str = ""
    """DiffAugment policy for D's inputs, e.g. ``color,translation`` (:mod:`faceinpaint.augment`); empty = off."""
    xflip: bool = False
    """Mirror each real training face left-right with probability 1/2."""
    path_regularize: float = Field(default=2.0, ge=0)
    path_batch_shrink: int = Field(default=2, ge=1)
    d_reg_every: int = Field(default=16, ge=1)
    g_reg_every: int = Field(default=4, ge=1)
    mixing: float = Field(default=0.9, ge=0, le=1)
    ema_kimg: float = Field(default=10.0, gt=0)
    """EMA half-life in thousands of images (Karras et al.)."""
    curve_samples: int = Field(default=600, ge=2)
    """Samples (and test faces) per learning-curve point (FD on both backbones)."""


    @field_validator("r1")
    @classmethod
    def _r1(cls, v):
        if v != "auto" and v < 0:
            raise ValueError(f"r1 must be >= 0 or 'auto', got {v}")
        return v

    @field_validator("diffaugment")
    @classmethod
    def _policy(cls, v: str) -> str:
        from .augment import parse_policy

        parse_policy(v)
        return v


class StructureParams(TrainBudget):
    backbone_blocks: tuple[int, int, int, int] = (3, 4, 14, 3)
    """IR blocks per stage (IR-50 = 3, 4, 14, 3)."""
    backbone_widths: tuple[int, int, int, int] = (64, 128, 256, 512)


class TextureParams(TrainBudget):
    base_width: int = Field(default=32, ge=4)
    max_width: int = Field(default=256, ge=4)
    critic_width: int = Field(default=64, ge=4)
    softmax_scale: float = Field(default=10.0, gt=0)
    lr_decay: float = Field(default=0.96, gt=0, le=1)
    lr_decay_every: int = Field(default=100_000, ge=1)
    critic_steps: int = Field(default=1, ge=1)


class PConvParams(TrainBudget):
    base_width: int = Field(default=64, ge=4)
    lr: float = Field(default=2e-4, gt=0)
    finetune_lr: float = Field(default=5e-5, gt=0)
    finetune_from_step: int = Field(default=375_000, ge=0)
    """Step at which the fine-tuning phase (frozen encoder BN, ``finetune_lr``) starts. Absolute,
    so that extending ``max_steps`` continues the same run instead of moving the phase."""


class RFRParams(TrainBudget):
    base_width: int = Field(default=64, ge=4)
    recurrences: int = Field(default=6, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    finetune_lr: float = Field(default=5e-5, gt=0)
    finetune_from_step: int = Field(default=375_000, ge=0)


class EvaluateParams(_Strict):
    batch_size: int = Field(default=16, ge=1)
    max_test_images: int | None = Field(default=None, ge=1)
    irregular_per_bin: int = Field(default=50, ge=1)
    figure_images: int = Field(default=6, ge=1)
    bootstrap: int = Field(default=2000, ge=100)
    """Paired-bootstrap resamples of per-image metrics (claims C1-C3)."""
    curve_images: int = Field(default=200, ge=0)
    """Test images (with their squares) per learning-curve point of an inpainter; 0: no curve."""
    bootstrap_fd: int = Field(default=1000, ge=10)
    """Resamples for the Frechet distance, which recomputes FD on each (costlier)."""


class RuntimeParams(_Strict):
    """How a profile's training runs on its device, not what it learns: not part of a run's
    identity (a run may continue with other settings) and off (today's behaviour, bit for bit)
    for ``smoke`` and ``cpu``. docs/GPU.md measures them."""

    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16``: the recipes' forward passes under bf16 autocast (weights, optimiser states and
    losses stay fp32)."""
    channels_last: bool = False
    """Trainable modules and image batches in channels-last memory format."""
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    """``torch.compile`` mode of the trainable modules' forward passes."""
    deterministic: bool = True
    """``true``: deterministic kernels where torch has them (the ops without one are named in
    the run's log); ``false``: ``cudnn.benchmark`` picks the fastest kernels."""

    def is_default(self) -> bool:
        return self == RuntimeParams()


class DiagnosticsParams(_Strict):
    """The C1 diagnostics (:mod:`faceinpaint.diagnostics`; issue "Why C1 fails at 64 px"). 0 images:
    the stage writes a note that it is off (the ``smoke`` profile, and any profile without the block)."""

    residual_images: int = Field(default=0, ge=0)
    """First test images (with their squares) of ``stage2_residual``: stage 1 against Ours."""
    residual_finetune_steps: int = Field(default=0, ge=0)
    """Fine-tune steps per loss reading from Ours' last checkpoint (its optimiser state); 0: no
    fine-tune table (each step costs one training step of Ours per reading)."""
    inversion_images: int = Field(default=0, ge=0)
    """First test images (with their squares) of ``inversion_oracle``."""
    inversion_steps: tuple[int, ...] = (50, 100, 200)
    """Adam steps at which the masked W+ inversion is scored (increasing)."""
    inversion_lr: float = Field(default=0.01, gt=0)

    @field_validator("inversion_steps")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"inversion_steps must be positive and increasing, got {list(v)}")
        return v


class ProfileParams(_Strict):
    resolution: int
    stylegan: StyleGANParams
    structure: StructureParams
    texture: TextureParams
    pconv: PConvParams
    rfr: RFRParams
    evaluate: EvaluateParams = EvaluateParams()
    runtime: RuntimeParams = RuntimeParams()
    diagnostics: DiagnosticsParams = DiagnosticsParams()
    budgets: dict[Literal["stylegan", "structure", "full", "variant1", "variant2", "pconv", "rfr"], int | None] = {}
    """``max_steps`` of one model where it differs from its section's. The three texture models
    share ``texture``: one of them may be mid-way through its long run while another has reached
    the shared budget. Absent or ``None``: the section's ``max_steps``."""

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: dict) -> dict:
        for name, steps in v.items():
            if steps is not None and steps < 0:
                raise ValueError(f"budgets.{name} must be >= 0 steps or null, got {steps}")
        return v

    def max_steps(self, model: str) -> int:
        """The step budget of ``model``: its ``budgets`` entry, else its section's ``max_steps``."""
        from .models import MODELS

        own = self.budgets.get(model)
        return own if own is not None else getattr(self, MODELS[model].section).max_steps

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        return check_resolution(v)


DEVICE_FORMS = "'cpu', 'cuda' or 'cuda:N'"
STDDEV_GROUP = 4
"""StyleGAN2's minibatch-stddev group (``faceinpaint.stylegan2.Discriminator.stddev_group``)."""


def check_device(value: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (syntax only; :func:`device_available` asks torch)."""
    kind, _, index = value.partition(":")
    if kind == "cpu" and not index or kind == "cuda" and (not _ or index.isdigit()):
        return value
    raise ValueError(f"device must be {DEVICE_FORMS}, got {value!r}")


def check_batches(params: "ParamsFile", world_size: int | None = None, source: str = "params.yaml") -> None:
    """Every section's ``batch_size`` is per process, so no process count changes what one
    process computes. What a per-process batch must allow on ``world_size`` processes (default:
    ``nproc``) is checked here, naming the key and the process count: StyleGAN2's
    minibatch-stddev group keeps its size of 4 on every process count, so with several processes
    the prior's per-process batch must be a multiple of 4 (one process may also use a divisor)."""
    world = params.nproc if world_size is None else world_size
    b = params.profiles[params.profile].stylegan.batch_size
    group = min(b, STDDEV_GROUP)
    if b % group or (world > 1 and group < STDDEV_GROUP):
        raise ConfigError(
            f"{source}: profiles.{params.profile}.stylegan.batch_size is {b} images per process on {world} process(es): "
            f"StyleGAN2's minibatch-stddev group of {STDDEV_GROUP} needs a per-process batch that is a multiple of "
            f"{STDDEV_GROUP} on several processes (in one process, a multiple or a divisor of {STDDEV_GROUP})")


def device_available(device: str, nproc: int = 1) -> None:
    """Raise :class:`ConfigError` unless torch sees ``device`` (and, for ``cuda`` with ``nproc``
    processes per node, one CUDA device per process)."""
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); set device: cpu in params.yaml")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"device {device!r} asked for, but torch sees {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    if nproc > 1 and nproc > count:
        raise ConfigError(f"nproc {nproc} processes per node need one CUDA device each, but torch sees {count}")


class UnseenParams(_Strict):
    """The unseen-people test set (:mod:`faceinpaint.unseen`, the ``unseen`` stage): public
    CelebA-HQ / FFHQ photographs of people outside the training identities, framed like the
    prepared crops (eye positions measured at the profile's resolution)."""

    originals: str = "unseen_sources"
    """Folder of the original files (DVC-tracked, ``unseen_sources.dvc``, in the model store)."""
    sources: str = "reports/unseen/sources.tsv"
    """Provenance of every original: file, repository, commit, path, sha256, bytes, status."""
    max_faces: int = Field(default=200, ge=1)
    """The first this many faces (in the provenance table's order) that pass are kept."""
    max_padding: float = Field(default=0.06, ge=0.0, lt=0.5)
    """Largest part of a crop's side that may lie outside its original (filled by mirroring)."""


class ParamsFile(_Strict):
    profile: Literal["smoke", "cpu", "paper"] = "cpu"
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"
    """Torch device of every torch stage (train, evaluate, test-features, identity-auc, inpaint):
    ``cpu``, ``cuda`` (each process its ``cuda:LOCAL_RANK``) or ``cuda:N``. Not a param of any
    stage's result (not in a run's identity, not declared to DVC): it says where, not what."""
    nproc: int = Field(default=1, ge=1)
    """Training processes per node; above 1, ``faceinpaint train`` relaunches itself through
    ``torchrun --standalone --nproc-per-node`` (docs/GPU.md). Every section's ``batch_size`` is
    per process: the global batch is ``batch_size x nproc x nodes``."""
    data: DataParams = DataParams()
    masks: MaskParams = MaskParams()
    losses: LossParams = LossParams()
    learning_rates: LearningRates = LearningRates()
    backbones: BackboneParams = BackboneParams()
    unseen: UnseenParams = UnseenParams()
    external_methods: dict[str, str] = {}
    """Methods outside the code base, ``name: predictions folder`` for the exported benchmark
    (faceinpaint.benchmark): each is scored by ``faceinpaint evaluate --predictions`` and joins
    the report's tables and paired comparisons below the paper's rows, marked external."""
    profiles: dict[Literal["smoke", "cpu", "paper"], ProfileParams]

    @field_validator("external_methods")
    @classmethod
    def _external_names(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        from .models import MODELS

        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name) or name in MODELS:
                raise ValueError(f"external method {name!r}: expected letters, digits, '_' or '-', not a registered model's name")
        return v

    @model_validator(mode="after")
    def _active_profile_exists(self) -> "ParamsFile":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} has no block under 'profiles'")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)



class Config:
    """The resolved configuration: common sections plus the active profile's block."""

    def __init__(self, params: ParamsFile, source: Path | None = None):
        self.params = params
        self.source = source
        self.profile_name = params.profile
        self.profile: ProfileParams = params.profiles[params.profile]

    def __getattr__(self, name: str) -> Any:
        # common sections first (data, masks, losses, ...), then the profile's (resolution, stylegan, ...)
        params = self.__dict__["params"]
        if name in type(params).model_fields:
            return getattr(params, name)
        return getattr(self.__dict__["profile"], name)

    def params_under(self, paths) -> dict[str, Any]:
        """The flattened keys (``a.b.c``, profile keys without ``profiles.<name>.``) that lie at
        or under any of ``paths``, e.g. ``("seed", "stylegan", "losses.structure")``."""
        flat = self.as_flat_dict()
        return {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in paths)}

    def as_flat_dict(self) -> dict[str, Any]:
        """Active configuration flattened to ``a.b.c`` keys (for MLflow params)."""
        common = self.params.model_dump(exclude={"profiles", "profile"})
        return {"profile": self.profile_name, **flatten(common), **flatten(self.profile.model_dump())}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a parameter of this section; check the spelling)"
        lines.append(f"  {path}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden" else f"  {path}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params.yaml") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        params = ParamsFile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    check_batches(params, source=source)
    return Config(params, Path(source))


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> Config:
    """Read and validate ``params.yaml``; ``profile`` overrides the file's ``profile`` key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"profile must be one of {PROFILES}, got {profile!r}")
        raw = dict(raw, profile=profile)
    cfg = parse_params(raw, str(path))
    device_available(cfg.device, cfg.nproc)
    return cfg
