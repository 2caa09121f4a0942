"""Every list of model names agrees with the registry (faceinpaint.models)."""

import yaml

from conftest import ROOT
from faceinpaint import cli, evaluate, report, stages
from faceinpaint.models import INPAINTERS, MODELS, TEXTURE_MODELS, TRAINED, spec, training_stages, upstream_chain


def test_dvc_yaml_matrices_are_the_registry():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    trained_in_matrix = set(pipeline["train"]["foreach"])
    assert trained_in_matrix | {"stylegan", "structure"} == set(TRAINED)
    assert {"stylegan", "structure"} <= set(pipeline)
    assert set(pipeline["evaluate"]["foreach"]) == set(INPAINTERS)
    for name, item in pipeline["train"]["foreach"].items():
        assert item["section"] == spec(name).section


def test_cli_stages_evaluation_and_report_use_the_registry():
    train_choices = next(p for p in cli.cli.commands["train"].params if p.name == "model").type.choices
    assert list(train_choices) == list(TRAINED)
    evaluate_choices = next(p for p in cli.cli.commands["evaluate"].params if p.name == "model").type.choices
    assert list(evaluate_choices) == list(INPAINTERS)
    assert set(stages.READS) == set(TRAINED) and set(evaluate.UPSTREAM) == set(INPAINTERS)
    assert set(report.DEFAULT_MODELS.values()) == set(INPAINTERS)
    assert {n for names in report.TABLES.values() for n in names} <= {MODELS[m].display for m in INPAINTERS}


def test_registry_facts():
    assert TEXTURE_MODELS == ("full", "variant1", "variant2")
    assert upstream_chain("variant2") == ["structure", "stylegan"]
    assert training_stages("full") == ("stylegan", "structure", "full")
    assert training_stages("biharmonic") == ()
    assert not spec("stylegan").inpaints and not spec("biharmonic").trains
    assert spec("full").extras["attention_levels"] == (4, 5, 6)
