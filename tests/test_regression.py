import json

import pytest

from faceinpaint.regression import check, compare, metric_kind

TOL = {"psnr": 0.5, "ssim": 0.01, "fd": 5.0, "lpips": 0.02, "id_sim": 0.02}


def test_metric_kinds_follow_names():
    assert metric_kind("full.psnr") == "psnr"
    assert metric_kind("full.fd_efficientnet_lite0") == "fd"
    assert metric_kind("pconv.lpips_efficientnet_lite0-unitweights") == "lpips"
    assert metric_kind("full.images_seen") is None


def test_direction_and_tolerance():
    base = {"full": {"psnr": 30.0, "fd_x": 20.0, "ssim": 0.9}}
    rows = {r.metric: r.status for r in compare({"full": {"psnr": 29.6, "fd_x": 26.0, "ssim": 0.93}}, base, TOL)}
    assert rows == {"full.psnr": "ok", "full.fd_x": "REGRESSED", "full.ssim": "better"}
    rows = {r.metric: r.status for r in compare({"full": {"psnr": 29.4, "fd_x": 10.0}}, base, TOL)}
    assert rows == {"full.psnr": "REGRESSED", "full.fd_x": "better", "full.ssim": "MISSING"}


def test_check_files(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"m": {"psnr": 30.0}}, "tolerances": TOL}))
    (tmp_path / "good.json").write_text(json.dumps({"m": {"psnr": 30.1}}))
    (tmp_path / "bad.json").write_text(json.dumps({"m": {"psnr": 28.0}}))
    ok, table = check(tmp_path / "good.json", tmp_path / "base.json")
    assert ok and "m.psnr" in table
    ok, table = check(tmp_path / "bad.json", tmp_path / "base.json")
    assert not ok and "REGRESSED" in table
    with pytest.raises(FileNotFoundError, match="missing.json"):
        check(tmp_path / "missing.json", tmp_path / "base.json")
