"""The recipes and studies in ablations/: contents, headers and drift."""

from __future__ import annotations

import pathlib
import shutil
import tomllib

import pytest

from pipeline import components, study
from pipeline.config import flatten, from_dict, get_path

ABLATIONS = pathlib.Path(__file__).resolve().parents[1] / "ablations"
STUDIES = sorted(path for path in ABLATIONS.glob("*.toml") if "study" in tomllib.loads(path.read_text()))


def _recipe(name: str):
    return from_dict(study.load_recipe(name, ABLATIONS))


def test_perch2_turns_everything_on():
    config = _recipe("perch2")

    assert config.model.backbone == "efficientnet_b3"
    assert config.mixup.max_sources > 2
    assert not config.mixup.fixed_sources
    assert config.prototype.enabled
    assert config.prototype.prototypes_per_class == 4
    assert config.distillation.enabled
    assert config.source_loss.enabled
    assert config.source_loss.rank == 512
    assert config.labels.loss == "softmax"
    assert config.window.selection == "random"


def test_perch1_like_turns_the_new_parts_off():
    config = _recipe("perch1_like")

    assert config.labels.loss == "sigmoid"
    assert (config.mixup.max_sources, config.mixup.fixed_sources) == (2, True)
    assert not config.prototype.enabled
    assert not config.distillation.enabled
    assert not config.source_loss.enabled
    assert config.window.selection == "peak"


def test_recipes_differ_only_in_training_components():
    perch2 = flatten(study.load_recipe("perch2", ABLATIONS))
    perch1_like = flatten(study.load_recipe("perch1_like", ABLATIONS))
    component_paths = set(components.COMPONENTS["recipe"]["perch2"])

    differing = {path for path in perch2.keys() | perch1_like.keys() if perch2.get(path) != perch1_like.get(path)}

    assert differing
    assert differing <= component_paths


@pytest.mark.parametrize("name", ["perch1_like", "perch2"])
def test_recipe_level_matches_recipe_file(name):
    config = _recipe(name)

    for path, value in components.COMPONENTS["recipe"][name].items():
        assert get_path(config, path) == value, path


@pytest.mark.parametrize("name", ["perch1_like", "perch2"])
def test_recipe_serves_as_study_baseline(tmp_path, name):
    for recipe in ("perch2", "perch1_like"):
        shutil.copy(ABLATIONS / f"{recipe}.toml", tmp_path)
    (tmp_path / "study.toml").write_text(
        f'[study]\nname = "check"\nbaseline = "{name}"\nseeds = [0, 1]\n\n'
        '[config.model]\nbackbone = "tiny"\n\n'
        '[config.train]\nsteps = 70\n\n'
        '[factors]\nwindow = ["random", "peak"]\n'
    )

    loaded = study.load_study(tmp_path / "study.toml")

    assert len(loaded.trials) == 4
    recipe = _recipe(name)
    for trial in loaded.trials:
        assert trial.config.model.backbone == "tiny"
        assert trial.config.labels == recipe.labels
        assert trial.config.prototype == recipe.prototype
        assert trial.config.window.selection == trial.cell["window"]


@pytest.mark.parametrize("path", STUDIES, ids=[path.stem for path in STUDIES])
def test_study_header_answers_the_three_questions(path):
    header = path.read_text().split("\n[", 1)[0]

    assert "Question:" in header
    assert "Cost:" in header
    assert "laptop" in header
    assert "Last result:" in header
    assert study.load_study(path).trials


def test_perch2_components_is_a_laptop_factorial():
    loaded = study.load_study(ABLATIONS / "perch2_components.toml")

    assert loaded.baseline == "laptop"
    assert [factor.name for factor in loaded.factors] == ["mixup", "prototype_distillation", "source_loss", "window"]
    assert len(loaded.cells) == 16
    for trial in loaded.trials:
        assert trial.config.model.backbone == "tiny"
        # At about 0.43 s of CPU per tiny step plus a minute of compiling and
        # evaluation per trial, 32 trials of 120 steps take about 30 minutes
        # on two cores. More steps or trials break that budget.
        assert len(loaded.trials) * trial.config.train.steps <= 32 * 120


def test_data_vs_architecture_crosses_data_backbone_recipe():
    loaded = study.load_study(ABLATIONS / "data_vs_architecture.toml")
    levels = loaded.factor_levels()

    assert set(levels) == {"training_data", "backbone", "recipe"}
    assert len(loaded.cells) == 8
    for trial in loaded.trials:
        sources = trial.config.subset.sources
        assert sources == (("Cicadidae",) if trial.cell["training_data"] == "cicadidae" else ("Cicadidae", "Orthoptera"))
        assert trial.config.model.backbone == trial.cell["backbone"]
        assert trial.config.labels.loss == ("softmax" if trial.cell["recipe"] == "perch2" else "sigmoid")
