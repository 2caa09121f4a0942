"""The pipeline as a table of contents: what each DVC stage declares, what a run's identity is,
and what reruns when a param or an upstream model changes."""

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from faceinpaint.config import load_config
from faceinpaint.stages import READS, UPSTREAM, run_identity, stage_reads, upstream_chain

DVC = [sys.executable, "-m", "dvc"]
TRAINING_STAGES = {"stylegan": "stylegan", "structure": "structure",
                   **{f"train@{m}": m for m in ("full", "variant1", "variant2", "pconv", "rfr")}}
# Declared by a training stage for what it writes besides the run (the prior's final check and
# the learning-curve points), not part of the run's identity.
CURVE = {"evaluate.curve_images", "evaluate.batch_size"}
REPORT_PARAMS = {"stylegan": {"backbones", "evaluate.max_test_images"},
                 **{m: CURVE for m in ("structure", "full", "variant1", "variant2", "pconv", "rfr")}}
# The step budget of a texture model that has its own (`budgets.<model>`, since `texture` is
# shared): a budget, not part of the identity, but declared so that raising it reruns the stage.
OWN_BUDGET = {"full": {"budgets.full"}, "variant2": {"budgets.variant2"}}


def dvc_stages(root: Path = ROOT):
    from dvc.repo import Repo

    return {s.addressing: s for s in Repo(str(root)).index.stages}


def declared_params(stage, profile: str) -> set[str]:
    from dvc.dependency.param import ParamsDependency

    prefix = f"profiles.{profile}."
    return {p.removeprefix(prefix) for d in stage.deps if isinstance(d, ParamsDependency) for p in d.params}


def test_every_training_stage_declares_exactly_what_its_run_identity_reads():
    cfg = load_config()
    stages = dvc_stages()
    for address, model in TRAINING_STAGES.items():
        declared = declared_params(stages[address], cfg.profile_name)
        own_budget = OWN_BUDGET.get(model, set())
        assert own_budget <= declared, address
        assert declared - REPORT_PARAMS.get(model, set()) - own_budget == set(stage_reads(model)), address


def test_upstream_chain_and_reads():
    assert upstream_chain("full") == ["structure", "stylegan"]
    assert upstream_chain("variant1") == [] and upstream_chain("structure") == ["stylegan"]
    assert set(READS) == set(UPSTREAM)
    assert "stylegan" in stage_reads("full") and "losses.structure" in stage_reads("variant2")
    assert not any(p.startswith(("stylegan", "structure", "pconv")) for p in stage_reads("variant1"))


def test_identity_holds_upstream_params_and_file_hashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "params.yaml", "smoke")
    (tmp_path / "artifacts/prepared").mkdir(parents=True)
    (tmp_path / "artifacts/prepared/train_images.npy").write_bytes(b"faces")
    with pytest.raises(FileNotFoundError, match="artifacts/models/stylegan/stylegan2.pt"):
        run_identity(cfg, "structure")
    (tmp_path / "artifacts/models/stylegan").mkdir(parents=True)
    (tmp_path / "artifacts/models/stylegan/stylegan2.pt").write_bytes(b"prior one")
    first = run_identity(cfg, "structure")
    assert first["stylegan.style_dim"] == cfg.stylegan.style_dim and "losses.structure.lpips" in first
    assert first["upstream.stylegan.sha256"] == hashlib.sha256(b"prior one").hexdigest()
    (tmp_path / "artifacts/models/stylegan/stylegan2.pt").write_bytes(b"prior two")
    assert run_identity(cfg, "structure")["upstream.stylegan.sha256"] != first["upstream.stylegan.sha256"]
    assert not any(k.startswith(("stylegan.", "upstream.stylegan")) for k in run_identity(cfg, "pconv"))


def scratch_dvc_project(tmp_path: Path) -> Path:
    """The repository's pipeline files in a scratch git repo, every dependency and output a
    placeholder, and a dvc.lock recorded from them: `dvc status` then lists param changes only
    against the current params."""
    from dvc.dependency.param import ParamsDependency

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    project = tmp_path / "project"
    for name in files:
        if name.startswith(("src/", "baselines/", ".dvc/", "dvc.yaml", "params.yaml", "data.dvc", ".dvcignore")):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    from dvc.repo import Repo

    with contextlib.chdir(project):
        _record_lock(Repo("."))
    return project


def _record_lock(repo) -> None:
    from dvc.dependency.param import ParamsDependency

    with repo.lock:
        for stage in repo.index.stages:
            if stage.is_data_source:
                continue
            for item in [*stage.deps, *stage.outs]:
                if isinstance(item, ParamsDependency):
                    continue
                path = Path(item.fs_path)
                if not path.exists():
                    if path.suffix:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text("placeholder\n")
                    else:
                        path.mkdir(parents=True)
                        (path / "placeholder").write_text("placeholder\n")
            stage.save(allow_missing=True)
            stage.dump(update_pipeline=False)


def stages_with_param_changes(project: Path) -> set[str]:
    out = subprocess.run([*DVC, "status", "--json"], cwd=project, capture_output=True, text=True, check=True).stdout
    changed = set()
    for stage, entries in json.loads(out).items():
        for entry in entries:
            if isinstance(entry, dict) and "params.yaml" in entry.get("changed deps", {}):
                changed.add(stage)
    return changed


@pytest.mark.parametrize("key, expected", [
    (("texture", "max_steps"), {"train@full", "train@variant1", "train@variant2",
                                "evaluate@full", "evaluate@variant1", "evaluate@variant2"}),
    (("stylegan", "lr"), {"stylegan", "structure", "train@full", "train@variant2", "evaluate@structure",
                          "evaluate@full", "evaluate@variant2"}),
    (("pconv", "finetune_from_step"), {"train@pconv", "evaluate@pconv"}),
])
def test_dvc_status_reruns_the_stages_that_read_a_param_and_nothing_else(tmp_path, key, expected):
    project = scratch_dvc_project(tmp_path)
    assert stages_with_param_changes(project) == set()
    params = yaml.safe_load((project / "params.yaml").read_text())
    section, name = key
    params["profiles"][params["profile"]][section][name] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_with_param_changes(project) == expected
