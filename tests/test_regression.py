import json

from pathlib import Path

import pytest

from faceinpaint.regression import check, compare, metric_kind


def test_metric_kinds_follow_names():
    assert metric_kind("full.psnr") == "psnr"
    assert metric_kind("full.fd_efficientnet_lite0") == "fd"
    assert metric_kind("pconv.lpips_efficientnet_lite0-unitweights") == "lpips"
    assert metric_kind("full.hole_l1") == "hole_l1"
    assert metric_kind("full.images_seen") is None


def test_any_change_in_either_direction_fails_and_rounding_does_not():
    base = {"full": {"psnr": 30.0, "fd_x": 20.0, "ssim": 0.9}}
    current = {"full": {"psnr": 30.0 * (1 + 5e-7), "fd_x": 19.9, "ssim": 0.9, "lpips_y": 0.1}}
    rows = {r.metric: r.status for r in compare(current, base)}
    assert rows == {"full.psnr": "equal", "full.fd_x": "CHANGED", "full.ssim": "equal", "full.lpips_y": "NEW"}
    rows = {r.metric: r.status for r in compare({"full": {"psnr": 30.0}}, base)}
    assert rows["full.fd_x"] == "MISSING" and rows["full.psnr"] == "equal"


def test_check_files(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"m": {"psnr": 30.0}}, "rel_tolerance": 1e-6}))
    (tmp_path / "good.json").write_text(json.dumps({"m": {"psnr": 30.0, "images_seen": 7}}))
    (tmp_path / "better.json").write_text(json.dumps({"m": {"psnr": 30.5}}))
    ok, table = check(tmp_path / "good.json", tmp_path / "base.json")
    assert ok and "m.psnr" in table and "0 of 1 metrics differ" in table
    ok, table = check(tmp_path / "better.json", tmp_path / "base.json")  # an unexplained gain fails too
    assert not ok and "CHANGED" in table
    with pytest.raises(FileNotFoundError, match="missing.json"):
        check(tmp_path / "missing.json", tmp_path / "base.json")


def test_a_new_metric_fails_against_this_kinds_own_baseline_and_not_against_another_kinds(tmp_path):
    from faceinpaint.regression import numerics_kind

    current = {"m": {"psnr": 30.0, "psnr_hole": 15.0}}
    (tmp_path / "run.json").write_text(json.dumps(current))
    for kind, fails in ((numerics_kind(), True), ("OtherVendor-AVX9-f1m1", False), (None, False)):
        doc = {"metrics": {"m": {"psnr": 30.0}}, **({"numerics_kind": kind} if kind else {})}
        (tmp_path / "base.json").write_text(json.dumps(doc))
        ok, table = check(tmp_path / "run.json", tmp_path / "base.json")
        assert ok is not fails and "m.psnr_hole" in table and "NEW" in table, kind
    # a changed or missing metric fails against any kind's baseline
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"m": {"psnr": 31.0, "ssim": 0.9}},
                                                     "numerics_kind": "OtherVendor-AVX9-f1m1"}))
    ok, table = check(tmp_path / "run.json", tmp_path / "base.json")
    assert not ok and "CHANGED" in table and "MISSING" in table


def test_baseline_path_takes_this_cpu_kinds_file_when_there_is_one(tmp_path):
    import torch

    from faceinpaint.regression import baseline_path, numerics_kind

    kind = numerics_kind()
    vendor, isa, *model = kind.split("-")
    assert isa == torch.backends.cpu.get_cpu_capability() and vendor
    cpuinfo = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert vendor == fields["vendor_id"] and model == [f"f{fields['cpu family']}m{fields['model']}"]
    default = tmp_path / "smoke.json"
    default.write_text("{}")
    assert baseline_path(default) == default  # no file for this kind: the default
    (tmp_path / "smoke-OtherVendor-AVX2.json").write_text("{}")
    assert baseline_path(default) == default
    coarse = tmp_path / f"smoke-{vendor}-{isa}.json"  # a baseline kept under vendor and ISA only
    coarse.write_text("{}")
    assert baseline_path(default) == coarse
    own = tmp_path / f"smoke-{kind}.json"
    own.write_text("{}")
    assert baseline_path(default) == own  # the exact kind wins over the coarse one
    assert baseline_path(default, "OtherVendor-AVX2") == tmp_path / "smoke-OtherVendor-AVX2.json"
    assert baseline_path(default, "OtherVendor-AVX2-f6m85") == tmp_path / "smoke-OtherVendor-AVX2.json"
