import copy

import pytest
import yaml

from faceinpaint.config import (MAX_RESOLUTION, MIN_RESOLUTION, PROFILES, ConfigError, check_resolution, flatten,
                                load_config, parse_params)
from faceinpaint.regression import numeric_leaves


@pytest.fixture()
def raw():
    return yaml.safe_load(open("params.yaml"))


def test_every_profile_loads_and_resolves(raw):
    assert set(raw["profiles"]) == set(PROFILES)
    for profile in PROFILES:
        cfg = load_config(profile=profile)
        block = raw["profiles"][profile]
        assert cfg.profile_name == profile and cfg.resolution == block["resolution"]
        assert cfg.texture.base_width == block["texture"]["base_width"]
        assert cfg.structure.backbone_widths == tuple(block["structure"]["backbone_widths"])
        # common sections are reachable next to the profile's own
        assert cfg.losses.structure.lpips == raw["losses"]["structure"]["lpips"]
        assert cfg.stylegan.batch_size == block["stylegan"]["batch_size"]


def test_default_profile_is_cpu():
    assert load_config().profile_name == "cpu"


def test_unknown_key_names_its_path(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["texture"]["base_widht"] = 16
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.texture\.base_widht: unknown key"):
        parse_params(bad)


def with_resolution(raw: dict, resolution: int) -> dict:
    out = copy.deepcopy(raw)
    out["profiles"]["smoke"]["resolution"] = resolution
    return dict(out, profile="smoke")


def test_smallest_resolution_is_accepted(raw):
    assert parse_params(with_resolution(raw, MIN_RESOLUTION)).resolution == MIN_RESOLUTION
    assert parse_params(with_resolution(raw, MAX_RESOLUTION)).resolution == MAX_RESOLUTION


@pytest.mark.parametrize("resolution", [MIN_RESOLUTION // 2, 8, 0, -32, 2 * MAX_RESOLUTION])
def test_resolution_outside_the_range_is_refused_naming_value_and_range(raw, resolution):
    with pytest.raises(ConfigError) as err:
        parse_params(with_resolution(raw, resolution))
    message = str(err.value)
    assert "profiles.smoke.resolution" in message and f"got {resolution}" in message
    assert f"power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}" in message
    assert "smallest side every model trains at" in message


@pytest.mark.parametrize("resolution", [48, 3 * MIN_RESOLUTION, MIN_RESOLUTION + 1])
def test_resolution_must_be_power_of_two(raw, resolution):
    with pytest.raises(ConfigError, match=rf"profiles\.smoke\.resolution.*power of two.*got {resolution}"):
        parse_params(with_resolution(raw, resolution))


def test_a_bad_resolution_in_an_inactive_profile_is_refused_too(raw):
    """Every profile block is validated, not only the active one; the validator alone too."""
    bad = copy.deepcopy(raw)
    bad["profiles"]["paper"]["resolution"] = MIN_RESOLUTION // 2
    with pytest.raises(ConfigError, match=r"profiles\.paper\.resolution"):
        parse_params(dict(bad, profile="cpu"))
    assert check_resolution(MIN_RESOLUTION) == MIN_RESOLUTION
    with pytest.raises(ValueError, match="power of two"):
        check_resolution(MIN_RESOLUTION // 2)


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


def test_flatten_by_hand():
    nested = {"a": {"b": 1, "c": {"d": "x", "e": [1, 2]}}, "f": None, "g": {}, "h": 2.5, "i": {"j": True}}
    assert flatten(nested) == {"a.b": 1, "a.c.d": "x", "a.c.e": [1, 2], "f": None, "h": 2.5, "i.j": True}
    assert list(flatten(nested)) == ["a.b", "a.c.d", "a.c.e", "f", "h", "i.j"]  # insertion order
    assert flatten({"k": {"l": 3}}, "run.") == {"run.k.l": 3}
    assert flatten({}) == {}
    # the metrics check keeps the numbers only, as floats
    assert numeric_leaves(nested) == {"a.b": 1.0, "h": 2.5}


def test_flat_dict_has_profile_values(raw):
    flat = load_config(profile="smoke").as_flat_dict()
    assert flat["profile"] == "smoke" and flat["resolution"] == raw["profiles"]["smoke"]["resolution"]
    assert flat["losses.texture.l1"] == raw["losses"]["texture"]["l1"]
    assert flat["structure.backbone_widths"] == tuple(raw["profiles"]["smoke"]["structure"]["backbone_widths"])
    assert "profiles.smoke.resolution" not in flat and not any(k.startswith("profiles.") for k in flat)


def test_params_under_hold_only_the_given_paths(raw):
    cfg = load_config(profile="cpu")
    tex = cfg.params_under(("seed", "data", "resolution", "texture", "losses.texture"))
    assert tex["texture.base_width"] == cfg.texture.base_width and tex["losses.texture.l1"] == raw["losses"]["texture"]["l1"]
    assert tex["resolution"] == raw["profiles"]["cpu"]["resolution"] and "data.source" in tex and "seed" in tex
    assert not any(k.startswith(("stylegan.", "pconv.", "losses.structure.", "losses.pconv.", "masks.")) for k in tex)
