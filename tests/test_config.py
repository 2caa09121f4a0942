import copy

import pytest
import yaml

from faceinpaint.config import ConfigError, load_config, parse_params


@pytest.fixture()
def raw():
    return yaml.safe_load(open("params.yaml"))


def test_every_profile_loads_and_resolves(raw):
    for profile, res in (("smoke", 32), ("cpu", 64), ("paper", 256)):
        cfg = load_config(profile=profile)
        assert cfg.resolution == res
        assert cfg.n_styles == 2 * {32: 5, 64: 6, 256: 8}[res] - 2
        # common sections are reachable next to the profile's own
        assert cfg.losses.structure.lpips == 0.8 and cfg.stylegan.batch_size >= 1


def test_default_profile_is_cpu():
    assert load_config().profile_name == "cpu"


def test_unknown_key_names_its_path(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["texture"]["base_widht"] = 16
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.texture\.base_widht: unknown key"):
        parse_params(bad)


def test_resolution_must_be_power_of_two(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["smoke"]["resolution"] = 48
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.resolution.*power of two"):
        parse_params(bad)


def test_negative_steps_and_wrong_types_rejected(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["pconv"]["max_steps"] = -5
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.pconv\.max_steps"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["losses"]["structure"]["hole"] = "six"
    with pytest.raises(ConfigError, match=r"losses\.structure\.hole"):
        parse_params(bad)


def test_unknown_profile_rejected(raw):
    bad = dict(raw, profile="gpu")
    with pytest.raises(ConfigError, match="profile"):
        parse_params(bad)
    with pytest.raises(ConfigError, match="profile must be one of"):
        load_config(profile="huge")


def test_learning_rate_readings(raw):
    cfg = parse_params(raw)
    assert cfg.learning_rates.lr("structure") == pytest.approx(1e-3)
    assert cfg.learning_rates.lr("texture") == pytest.approx(1e-4)
    literal = parse_params(dict(raw, learning_rates=dict(raw["learning_rates"], reading="literal")))
    assert literal.learning_rates.lr("structure") == pytest.approx(1e-2)
    assert literal.learning_rates.lr("texture") == pytest.approx(1e-3)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_flat_dict_has_profile_values():
    flat = load_config(profile="smoke").as_flat_dict()
    assert flat["profile"] == "smoke" and flat["resolution"] == 32 and flat["losses.texture.l1"] == 100.0


def test_params_under_hold_only_the_given_paths():
    cfg = load_config(profile="cpu")
    tex = cfg.params_under(("seed", "data", "resolution", "texture", "losses.texture"))
    assert tex["texture.base_width"] == cfg.texture.base_width and tex["losses.texture.l1"] == 100.0
    assert tex["resolution"] == 64 and "data.source" in tex and "seed" in tex
    assert not any(k.startswith(("stylegan.", "pconv.", "losses.structure.", "losses.pconv.", "masks.")) for k in tex)
