"""The prior's small-data options (faceinpaint.augment): each transform against a computation
by hand with the same random draws."""

import pytest
import torch
import yaml

from faceinpaint.augment import color, diff_augment, parse_policy, r1_heuristic, random_xflip, translation
from faceinpaint.config import ConfigError, load_config

from conftest import ROOT


def batch(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_translation_is_a_zero_filled_integer_shift_per_image():
    x = batch()
    out = translation(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    s = int(16 * 0.125 + 0.5)
    dy, dx = torch.randint(-s, s + 1, (4,), generator=g), torch.randint(-s, s + 1, (4,), generator=g)
    for i in range(4):
        expected = torch.zeros_like(x[i])
        for r in range(16):
            for c in range(16):
                if 0 <= r - dy[i] < 16 and 0 <= c - dx[i] < 16:
                    expected[:, r, c] = x[i, :, r - dy[i], c - dx[i]]
        assert torch.equal(out[i], expected)


def test_color_is_brightness_then_saturation_then_contrast_per_image():
    x = batch()
    out = color(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    u, s, c = (torch.rand(4, 1, 1, 1, generator=g) for _ in range(3))
    y = x + (u - 0.5)
    y = (y - y.mean(1, keepdim=True)) * (2 * s) + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * (c + 0.5) + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, y)


def test_augmentation_is_differentiable_and_the_empty_policy_is_identity():
    x = batch().requires_grad_(True)
    diff_augment(x, ("color", "translation"), torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    y = batch()
    assert diff_augment(y, ()) is y


def test_policy_names_are_checked_and_cutout_is_refused():
    assert parse_policy("color, translation") == ("color", "translation")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="cutout is left out on purpose"):
        parse_policy("color,cutout")


def test_r1_heuristic_and_xflip():
    assert r1_heuristic(64, 16) == pytest.approx(0.0512)
    assert r1_heuristic(256, 16) == pytest.approx(0.8192)
    x = batch(8)
    out = random_xflip(x, torch.Generator().manual_seed(5))
    flips = torch.rand(8, generator=torch.Generator().manual_seed(5)) < 0.5
    for i in range(8):
        assert torch.equal(out[i], x[i].flip(2) if flips[i] else x[i])


def test_config_takes_auto_r1_and_refuses_a_bad_policy(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["cpu"]["stylegan"].update(r1="auto", diffaugment="color,translation", xflip=True)
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "ok.yaml", "cpu")
    assert cfg.stylegan.r1 == "auto" and cfg.stylegan.xflip
    raw["profiles"]["cpu"]["stylegan"]["diffaugment"] = "cutout"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.stylegan\.diffaugment"):
        load_config(tmp_path / "bad.yaml", "cpu")


def test_options_off_keep_the_run_identity(tmp_path, monkeypatch):
    from faceinpaint.stages import run_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts/prepared").mkdir(parents=True)
    (tmp_path / "artifacts/prepared/train_images.npy").write_bytes(b"faces")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(raw))
    raw["profiles"]["cpu"]["stylegan"].update(diffaugment="translation")
    (tmp_path / "on.yaml").write_text(yaml.safe_dump(raw))
    off, on = (run_identity(load_config(tmp_path / f, "cpu"), "stylegan") for f in ("off.yaml", "on.yaml"))
    assert "stylegan.diffaugment" not in off and "stylegan.xflip" not in off
    assert on["stylegan.diffaugment"] == "translation"


def test_a_prior_step_with_every_small_data_option_on(tmp_path):
    from faceinpaint.recipes import StyleGANRecipe

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["smoke"]["stylegan"].update(r1="auto", diffaugment="color,translation", xflip=True)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "p.yaml", "smoke")
    torch.manual_seed(0)
    recipe = StyleGANRecipe(cfg)
    modules = recipe.build(torch.device("cpu"))
    optimizers = recipe.optimizers(modules)
    logs = recipe.train_step(modules, optimizers, {"image": batch(4, 32)}, step=0)  # step 0: R1 and path length too
    assert {"d_loss", "g_loss", "r1"} <= set(logs) and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
