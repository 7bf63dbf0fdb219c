"""Study files: expansion into trials and validation errors that name the field."""

from __future__ import annotations

import pathlib

import pytest

from pipeline import cli
from pipeline.config import ConfigError
from pipeline.study import load_study

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_demo_is_two_by_two_by_three_seeds():
    study = load_study(REPO / "ablations" / "demo.toml")

    assert study.name == "demo"
    assert len(study.cells) == 4
    assert len(study.trials) == 12
    assert {trial.seed for trial in study.trials} == {0, 1, 2}
    assert len({trial.config_hash for trial in study.trials}) == 12


def test_levels_set_config_fields(tmp_path):
    path = _write(
        tmp_path,
        """
[study]
name = "s"
seeds = 2
[factors]
mixup = ["off", "pairwise"]
"train.learning_rate" = [0.001, 0.01]
""",
    )
    study = load_study(path)

    pairwise = [trial for trial in study.trials if trial.cell["mixup"] == "pairwise"]
    assert all(trial.config.mixup.max_sources == 2 for trial in pairwise)
    assert {trial.config.train.learning_rate for trial in study.trials} == {0.001, 0.01}
    assert study.trials[0].cell_id == "mixup=off,train.learning_rate=0.001"


@pytest.mark.parametrize(
    "body, message",
    [
        ('[factors]\nmixupp = ["off", "pairwise"]', "unknown component 'mixupp'"),
        ('[factors]\nmixup = ["off", "triple"]', "unknown level 'triple'"),
        ('[factors]\nmixup = ["off"]', "at least two levels"),
        ('[config.train]\nsteps = "many"', "train.steps: expected an integer"),
        ("[config.mixup]\nalpha = -1.0", "mixup.alpha"),
        ('[config.model]\nbackbone = "resnet"', "model.backbone: unknown preset 'resnet'"),
        ("[config.train]\nstepz = 3", "unknown config field train.stepz"),
        ('[config.labels]\nloss = "hinge"', "labels.loss: invalid value 'hinge'"),
        ("[config.distillation]\nenabled = true", "distillation.enabled = true needs prototype.enabled"),
        ('[factors]\n"train.nothing" = [1, 2]', "unknown config field train.nothing"),
    ],
)
def test_bad_study_names_the_field(tmp_path, body, message):
    path = _write(tmp_path, f'[study]\nname = "s"\nseeds = [0]\n{body}\n')

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_study(path)


def test_bad_study_header_fields(tmp_path):
    with pytest.raises(ConfigError, match="study.sedes: unknown field"):
        load_study(_write(tmp_path, '[study]\nname = "s"\nsedes = [0]\n'))
    with pytest.raises(ConfigError, match="study.seeds: expected"):
        load_study(_write(tmp_path, '[study]\nname = "s"\nseeds = "three"\n'))
    with pytest.raises(ConfigError, match="study.name"):
        load_study(_write(tmp_path, '[study]\nname = "a/b"\n'))


def test_missing_recipe_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="recipe 'nope' not found"):
        load_study(_write(tmp_path, '[study]\nname = "s"\nbaseline = "nope"\n'))


def test_cli_plan_prints_trial_count(capsys):
    assert cli.main(["plan", str(REPO / "ablations" / "demo.toml")]) == 0

    assert "4 cells x 3 seeds = 12 trials" in capsys.readouterr().out


def test_cli_reports_bad_study_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, '[study]\nname = "s"\n[factors]\nmixupp = ["off", "on"]\n')

    assert cli.main(["plan", str(path)]) == 2

    error = capsys.readouterr().err
    assert "unknown component 'mixupp'" in error
    assert "Traceback" not in error


def _design_study(tmp_path, design: str, extra: str = "", factors: int = 4) -> str:
    names = ["mixup", "source_loss", "prototype", "window"][:factors]
    levels = {
        "mixup": '["off", "pairwise"]',
        "source_loss": '["off", "on"]',
        "prototype": '["off", "on"]',
        "window": '["random", "peak"]',
    }
    lines = "\n".join(f"{name} = {levels[name]}" for name in names)
    return _write(
        tmp_path, f'[study]\nname = "d"\nseeds = [0]\ndesign = "{design}"\n{extra}\n[factors]\n{lines}\n'
    )


def test_one_at_a_time_has_baseline_full_and_single_changes(tmp_path):
    study = load_study(_design_study(tmp_path, "one_at_a_time"))

    cells = [tuple(cell.values()) for cell in study.cells]
    assert cells[0] == ("off", "off", "off", "random")
    assert ("pairwise", "off", "off", "random") in cells
    assert ("pairwise", "on", "on", "peak") in cells
    assert ("off", "on", "on", "peak") in cells
    assert len(cells) == 10


def test_fractional_resolution_four_halves_the_grid(tmp_path):
    study = load_study(_design_study(tmp_path, "fractional", "resolution = 4"))

    assert len(study.cells) == 8
    for factor in ("mixup", "source_loss", "prototype", "window"):
        levels = [cell[factor] for cell in study.cells]
        assert len(set(levels)) == 2
        assert levels.count(levels[0]) == 4


def test_explicit_cells_default_to_reference_levels(tmp_path):
    path = _write(
        tmp_path,
        '[study]\nname = "c"\nseeds = [0]\ndesign = "cells"\n[factors]\nmixup = ["off", "pairwise"]\n'
        'source_loss = ["off", "on"]\n[[cells]]\nmixup = "pairwise"\n[[cells]]\nsource_loss = "on"\n',
    )

    study = load_study(path)

    assert study.cells == [{"mixup": "pairwise", "source_loss": "off"}, {"mixup": "off", "source_loss": "on"}]


@pytest.mark.parametrize(
    "design, extra, message",
    [
        ("fractional", "resolution = 7", "study.resolution: expected 3, 4 or 5"),
        ("cells", "", "needs \\[\\[cells\\]\\] tables"),
        ("sequential", "", "unknown design 'sequential'"),
    ],
)
def test_bad_design_names_the_field(tmp_path, design, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_design_study(tmp_path, design, extra))


def test_negative_learning_rate_rejected(tmp_path):
    study_file = tmp_path / "bad.toml"
    study_file.write_text('[study]\nname = "bad"\nseeds = [0]\n[factors]\n"train.learning_rate" = [0.001, -1.0]\n')

    with pytest.raises(ConfigError, match="train.learning_rate: must be positive, got -1.0"):
        load_study(study_file)
