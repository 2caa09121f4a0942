"""Every model of the suite through its recipe: one real training step, export, reload, and the
invariant every inpainter must keep (known pixels untouched, bit for bit)."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, require_data
from faceinpaint.config import MIN_RESOLUTION, parse_params
from faceinpaint.data import TrainingDataset, load_face
from faceinpaint.inference import InpaintError, inpaint_file
from faceinpaint.recipes import ModelMissingError, export_model, load_inpainter, make_recipe
from faceinpaint.training import make_ema

ORDER = ("stylegan", "structure", "full", "variant1", "variant2", "pconv", "rfr")


def photos(cfg, n: int) -> np.ndarray:
    """The first ``n`` real training photos, cropped and resized as params.yaml says."""
    files = sorted((ROOT / "data/celeba/train").glob("celeb_1*/*.jpg"))[:n]
    return np.stack([load_face(f, cfg.data.crop_box, cfg.resolution) for f in files])


def one_step_each(cfg) -> tuple[dict, dict]:
    """Every trained model in ORDER, in the current folder: built, one real training step on
    four real photos with square and irregular masks, exported to ``artifacts/models`` (the
    structure and texture models load their upstream from there). Returns (batch, losses)."""
    res = cfg.resolution
    rng = np.random.default_rng(0)
    dataset = TrainingDataset(photos(cfg, 8), (rng.random((4, res, res)) < 0.2).astype(np.uint8), seed=0, irregular_prob=0.5)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in ("image", "mask")}
    losses = {}
    torch.manual_seed(0)
    for name in ORDER:
        recipe = make_recipe(cfg, name)
        modules = recipe.build(torch.device("cpu"))
        for ema_name, spec in recipe.ema.items():
            modules[ema_name] = make_ema(modules[spec.source])
        frozen_before = {k: v.clone() for k, v in modules["reconstructor"].generator.state_dict().items()} if name == "structure" else None
        losses[name] = {k: float(v) for k, v in recipe.train_step(modules, recipe.optimizers(modules), batch, 0).items()}
        if frozen_before is not None:
            after = modules["reconstructor"].generator.state_dict()
            losses["structure_generator_unchanged"] = all(torch.equal(frozen_before[k], after[k]) for k in after)
        export_model(cfg, recipe, modules, Path("artifacts/models") / name)
    return batch, losses


def smoke_project(tmp_path_factory, name: str, edit=lambda raw: dict(raw, profile="smoke")):
    """A scratch project folder (the real data linked in) with ``edit(params.yaml)`` written as
    its params (default: the smoke profile); returns ``(folder, config)``."""
    require_data()
    work = tmp_path_factory.mktemp(name)
    (work / "data").symlink_to(ROOT / "data")
    raw = edit(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    return work, parse_params(raw)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch project: smoke params, the real data, and every model exported after one
    real training step on real photos (the structure and texture models need their upstream)."""
    work, cfg = smoke_project(tmp_path_factory, "project")
    old = os.getcwd()
    os.chdir(work)
    try:
        batch, losses = one_step_each(cfg)
        yield work, cfg, batch, losses
    finally:
        os.chdir(old)


@pytest.fixture()
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir[0])
    return workdir


def test_one_training_step_of_every_model_is_finite(in_workdir):
    _, _, _, losses = in_workdir
    for name in ORDER:
        assert losses[name], name
        assert all(math.isfinite(v) for v in losses[name].values()), (name, losses[name])
    assert losses["structure_generator_unchanged"]
    assert {"l2", "lpips", "id", "hole", "valid", "total"} <= set(losses["structure"])
    assert {"l1", "perceptual", "adversarial", "gradient_penalty"} <= set(losses["full"])
    assert {"valid", "hole", "perceptual", "style", "tv"} <= set(losses["pconv"])


@pytest.mark.parametrize("name", ["structure", "full", "variant1", "variant2", "pconv", "rfr", "biharmonic"])
def test_every_model_keeps_known_pixels_bit_for_bit(in_workdir, name):
    _, cfg, batch, _ = in_workdir
    inpaint = load_inpainter(cfg, name)
    image, mask = batch["image"], batch["mask"]
    with torch.no_grad():
        out = inpaint(image * (1 - mask), mask)
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(out["composite"][known], image[known])
    assert out["composite"].shape == image.shape and torch.isfinite(out["composite"]).all()
    # the hole is really filled by the model, not left as the damaged input's zeros
    assert not torch.equal(out["composite"][~known], torch.zeros_like(out["composite"][~known]))


def test_variant1_and_baselines_ignore_hole_content(in_workdir):
    _, cfg, batch, _ = in_workdir
    image, mask = batch["image"], batch["mask"]
    other = torch.where(mask > 0.5, torch.rand_like(image) * 2 - 1, image)
    for name in ("variant1", "pconv", "rfr"):
        inpaint = load_inpainter(cfg, name)
        with torch.no_grad():
            a = inpaint(image * (1 - mask), mask)["composite"]
            b = inpaint(other * (1 - mask), mask)["composite"]
        assert torch.equal(a, b), name


def test_untrained_model_is_a_clear_error(in_workdir, tmp_path):
    _, cfg, _, _ = in_workdir
    raw = cfg.params.model_dump(mode="json")
    raw["profile"] = "cpu"  # models in the work dir were made at the smoke resolution
    trained, wanted = cfg.resolution, parse_params(raw).resolution
    assert trained != wanted
    with pytest.raises(ModelMissingError, match=f"trained at {trained}x{trained}.*{wanted}x{wanted}"):
        load_inpainter(parse_params(raw), "full")
    model = Path("artifacts/models/rfr/model.pt")
    saved = model.read_bytes()
    model.unlink()
    try:
        with pytest.raises(ModelMissingError, match="rfr.*has not been trained"):
            load_inpainter(cfg, "rfr")
    finally:
        model.write_bytes(saved)


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_inpaint_command_inputs(in_workdir, tmp_path):
    _, cfg, _, _ = in_workdir
    rng = np.random.default_rng(0)
    img = _save(tmp_path / "face.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    mask_arr = np.zeros((48, 48), np.uint8)
    mask_arr[10:20, 12:30] = 255
    mask = _save(tmp_path / "mask.png", mask_arr)
    out = tmp_path / "out.png"
    inpaint_file(cfg, img, mask, "full", str(out))
    result, original = np.asarray(Image.open(out)), np.asarray(Image.open(img))
    assert result.shape == original.shape
    assert np.array_equal(result[mask_arr == 0], original[mask_arr == 0])  # known pixels: the user's own

    bad_cases = [
        (img, _save(tmp_path / "small.png", mask_arr[:40, :40]), "full", "mask is 40x40, expected 48x48"),
        (img, _save(tmp_path / "grey.png", np.full((48, 48), 100, np.uint8)), "full", "grey values"),
        (img, _save(tmp_path / "empty.png", np.zeros((48, 48), np.uint8)), "full", "no hole"),
        (str(tmp_path), mask, "full", "is a directory"),
        (_save(tmp_path / "wide.png", np.zeros((20, 30, 3), np.uint8)), mask, "full", "expected a square"),
    ]
    for k, (i, m, model, message) in enumerate(bad_cases):
        target = tmp_path / f"bad{k}.png"
        with pytest.raises(InpaintError, match=message):
            inpaint_file(cfg, i, m, model, str(target))
        assert not target.exists()
    Path("artifacts/models/pconv/model.pt").rename("artifacts/models/pconv/model.bak")
    try:
        with pytest.raises(InpaintError, match="pconv.*has not been trained"):
            inpaint_file(cfg, img, mask, "pconv", str(tmp_path / "never.png"))
        assert not (tmp_path / "never.png").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    finally:
        Path("artifacts/models/pconv/model.bak").rename("artifacts/models/pconv/model.pt")


# ------------------------------------------------------------------ smallest resolution


def test_every_model_trains_a_step_at_the_smallest_resolution_the_config_accepts(tmp_path, monkeypatch):
    """config.MIN_RESOLUTION with tiny widths: every model builds, takes a finite training step
    and exports (the structure and texture models on their upstream)."""
    require_data()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    profile = raw["profiles"]["smoke"]
    profile["resolution"] = MIN_RESOLUTION
    profile["stylegan"].update(style_dim=16, n_mlp=1, channel_multiplier=1, channel_max=16)
    profile["structure"].update(backbone_blocks=[1, 1, 1, 1], backbone_widths=[8, 8, 16, 16])
    profile["texture"].update(base_width=4, max_width=8, critic_width=4)
    profile["pconv"].update(base_width=4)
    profile["rfr"].update(base_width=8, recurrences=1)
    cfg = parse_params(raw)
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    batch, losses = one_step_each(cfg)
    assert batch["image"].shape[-1] == MIN_RESOLUTION
    image, mask = batch["image"], batch["mask"]
    for name in ORDER:
        assert losses[name] and all(math.isfinite(v) for v in losses[name].values()), (name, losses[name])
        if name != "stylegan":  # every other one inpaints from its exported file
            with torch.no_grad():
                composite = load_inpainter(cfg, name)(image * (1 - mask), mask)["composite"]
            assert composite.shape == image.shape and torch.isfinite(composite).all(), name


def test_the_smallest_resolution_is_where_psp_and_rfr_stop():
    """Half of MIN_RESOLUTION (which the config refuses, tests/test_config.py) is too small for
    the pSp encoder (its coarsest pyramid map would be 1x1) and for RFR (attention map 2x2)."""
    from baselines.rfr import RFRInpainter
    from faceinpaint.psp import GradualStyleEncoder, n_styles

    half = MIN_RESOLUTION // 2
    with pytest.raises(ValueError, match=f"input_size must be a power of two >= {MIN_RESOLUTION}"):
        GradualStyleEncoder(half, n_styles(half), 16, (1, 1, 1, 1), (8, 8, 16, 16))
    with pytest.raises(ValueError, match=f"at least {MIN_RESOLUTION}"):
        RFRInpainter(half, 8, 1)
    GradualStyleEncoder(MIN_RESOLUTION, n_styles(MIN_RESOLUTION), 16, (1, 1, 1, 1), (8, 8, 16, 16))
    RFRInpainter(MIN_RESOLUTION, 8, 1)
