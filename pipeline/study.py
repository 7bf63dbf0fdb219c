"""Study files: which variants to train, and how many seeds of each.

A study is a TOML file in `ablations/`. It names a baseline recipe, config
overrides, the factors and their levels, and the seeds. Loading builds and
validates the config of every cell, so a bad value or an impossible
combination fails before anything trains, with the field in the message.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
import tomllib
from typing import Any

from pipeline import components
from pipeline.config import Config, ConfigError, config_hash, flatten, from_dict, merge, nest, to_dict

_STUDY_FIELDS = {
    "name",
    "description",
    "baseline",
    "seeds",
    "design",
    "cpus_per_trial",
    "max_concurrent_trials",
    "retries",
    "checkpoint_every",
    "keep_checkpoints",
    "disk_budget_mb",
    "resolution",
    "seed_packing",
    "gpus_per_trial",
}
_DESIGNS = ("full_factorial", "one_at_a_time", "fractional", "cells")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Factor:
    """A component varied by the study, with its levels' config overrides."""

    name: str
    levels: tuple[str, ...]  # the first is the reference level
    overrides: dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run: a cell of the design and a seed."""

    cell: dict[str, str]
    seed: int
    config: Config
    config_hash: str

    @property
    def cell_id(self) -> str:
        return ",".join(f"{name}={level}" for name, level in self.cell.items()) or "baseline"

    @property
    def trial_id(self) -> str:
        return f"{self.cell_id},seed={self.seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    """A validated study: its factors, seeds and every trial's config."""

    name: str
    description: str
    path: pathlib.Path
    baseline: str
    factors: tuple[Factor, ...]
    seeds: tuple[int, ...]
    design: str
    trials: tuple[Trial, ...]
    cpus_per_trial: float
    max_concurrent_trials: int
    retries: int
    # Steps between checkpoints (0: none), checkpoints kept per trial, and
    # the most disk the study folder may use for them (0: no limit).
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    disk_budget_mb: float = 0.0
    # Train the seeds of a cell in one trial with jax.vmap (no checkpoints).
    seed_packing: bool = False
    # GPUs (or a fraction of one) per trial; 0 trains on CPUs.
    gpus_per_trial: float = 0.0

    @property
    def base_dir(self) -> pathlib.Path:
        """Folder that relative paths in the study resolve against."""
        return self.path.parent

    @property
    def cells(self) -> list[dict[str, str]]:
        seen: dict[str, dict[str, str]] = {}
        for trial in self.trials:
            seen.setdefault(trial.cell_id, trial.cell)
        return list(seen.values())

    def factor_levels(self) -> dict[str, list[str]]:
        return {factor.name: list(factor.levels) for factor in self.factors}


def _read_toml(path: pathlib.Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as error:
        raise ConfigError(f"study file not found: {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error


def _config_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of config fields, got {table!r}.")
    nested: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and "." not in key:
            nested = merge(nested, {key: _config_table(value, f"{where}.{key}")})
        else:
            nested = merge(nested, nest({key: value}))
    return nested


def load_recipe(name: str, folder: pathlib.Path) -> dict[str, Any]:
    """Return the config overrides of the recipe `name` (a file in `folder`)."""
    path = folder / f"{name}.toml" if not name.endswith(".toml") else folder / name
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.toml") if "recipe" in _read_toml(p))
        raise ConfigError(
            f"study.baseline: recipe {name!r} not found at {path}; recipes in {folder}: {', '.join(known) or 'none'}. "
            "Give the recipe's path instead (absolute, or relative to the study file, ending in .toml), "
            "or keep the study beside its recipes in ablations/."
        )
    document = _read_toml(path)
    if "recipe" not in document:
        raise ConfigError(f"study.baseline: {path} is not a recipe file; it needs a [recipe] table.")
    parent: dict[str, Any] = {}
    if document["recipe"].get("baseline"):
        parent = load_recipe(document["recipe"]["baseline"], folder)
    return merge(parent, _config_table(document.get("config", {}), f"{path.name} [config]"))


def _factor(name: str, levels: Any, custom: dict[str, Any]) -> Factor:
    if not isinstance(levels, list) or len(levels) < 2:
        raise ConfigError(f"factors.{name}: expected a list of at least two levels, got {levels!r}.")
    known_levels = dict(components.COMPONENTS.get(name, {}))
    for level, overrides in custom.get(name, {}).items():
        known_levels[level] = dict(flatten(_config_table(overrides, f"components.{name}.{level}")))

    if known_levels:
        overrides = {}
        for level in levels:
            if str(level) not in known_levels:
                raise ConfigError(
                    f"factors.{name}: unknown level {level!r}; known levels: {', '.join(known_levels)}. "
                    f"Define new levels in a [components.{name}.<level>] table."
                )
            overrides[str(level)] = known_levels[str(level)]
        return Factor(name, tuple(str(level) for level in levels), overrides)

    if "." not in name:
        raise ConfigError(
            f"factors: unknown component {name!r}; known components: {', '.join(sorted(components.COMPONENTS))}, "
            "or a dotted config path such as train.learning_rate."
        )
    # A dotted config path: each level is a value of that field.
    overrides = {str(level): {name: level} for level in levels}
    if len(overrides) != len(levels):
        raise ConfigError(f"factors.{name}: levels must be distinct, got {levels!r}.")
    return Factor(name, tuple(overrides), overrides)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"study.seeds: a count of seeds must be at least 1, got {value}.")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"study.seeds: seeds must be distinct, got {value}.")
        return tuple(value)
    raise ConfigError(f"study.seeds: expected a list of integers or a count, got {value!r}.")


def load_study(path: str | pathlib.Path) -> Study:
    """Read and validate a study file; every trial's config is built here."""
    path = pathlib.Path(path).resolve()
    document = _read_toml(path)
    unknown_tables = sorted(set(document) - {"study", "config", "factors", "components", "cells"})
    if unknown_tables:
        raise ConfigError(
            f"{path.name}: unknown table [{unknown_tables[0]}]; expected [study], [config], [factors], "
            "[components] and [[cells]]."
        )
    header = document.get("study")
    if not isinstance(header, dict):
        raise ConfigError(f"{path.name}: missing [study] table with at least name and seeds.")
    unknown = sorted(set(header) - _STUDY_FIELDS)
    if unknown:
        raise ConfigError(f"study.{unknown[0]}: unknown field; valid fields: {', '.join(sorted(_STUDY_FIELDS))}.")
    name = header.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"study.name: {name!r} must be letters, digits, '_', '-' or '.', as it names a folder.")
    design = header.get("design", "full_factorial")
    if design not in _DESIGNS:
        raise ConfigError(f"study.design: unknown design {design!r}; expected one of {', '.join(_DESIGNS)}.")
    seeds = _seeds(header.get("seeds", [0]))

    baseline = header.get("baseline", "")
    base = load_recipe(baseline, path.parent) if baseline else {}
    base = merge(base, _config_table(document.get("config", {}), "config"))
    if "seed" in flatten(base):
        raise ConfigError("config.seed: set seeds with study.seeds, not in [config].")

    factor_table = document.get("factors", {})
    custom = document.get("components", {})
    factors = tuple(_factor(name, levels, custom) for name, levels in factor_table.items())
    cells = design_cells(design, factors, header, document.get("cells"))
    trials = _expand(factors, cells, seeds, base)
    return Study(
        name=name,
        description=str(header.get("description", "")),
        path=path,
        baseline=baseline,
        factors=factors,
        seeds=seeds,
        design=design,
        trials=trials,
        cpus_per_trial=_cpus(header.get("cpus_per_trial", 1)),
        max_concurrent_trials=_non_negative(header, "max_concurrent_trials", 0),
        retries=_non_negative(header, "retries", 1),
        checkpoint_every=_non_negative(header, "checkpoint_every", 100),
        keep_checkpoints=max(1, _non_negative(header, "keep_checkpoints", 2)),
        disk_budget_mb=_non_negative_number(header, "disk_budget_mb"),
        seed_packing=_flag(header, "seed_packing"),
        gpus_per_trial=_non_negative_number(header, "gpus_per_trial"),
    )


def _non_negative_number(header: dict[str, Any], field: str) -> float:
    value = header.get(field, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"study.{field}: expected a number of at least 0, got {value!r}.")
    return float(value)


def _flag(header: dict[str, Any], field: str) -> bool:
    value = header.get(field, False)
    if not isinstance(value, bool):
        raise ConfigError(f"study.{field}: expected true or false, got {value!r}.")
    return value


def _cpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"study.cpus_per_trial: expected a positive number, got {value!r}.")
    return float(value)


def _non_negative(header: dict[str, Any], field: str, default: int) -> int:
    value = header.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"study.{field}: expected a number of at least 0, got {value!r}.")
    return int(value)


def design_cells(
    design: str, factors: tuple[Factor, ...], header: dict[str, Any], explicit: Any
) -> list[tuple[str, ...]]:
    """Return the cells of a design as tuples of levels, one per factor.

    - full_factorial: every combination of levels.
    - one_at_a_time: the baseline (every factor at its first level), the
      full recipe (every factor at its last level), each factor alone added
      to the baseline (add-one-in) and each factor alone removed from the
      full recipe (leave-one-out).
    - fractional: a two-level fractional factorial of study.resolution
      (3, 4 or 5), generated by pyDOE.
    - cells: the [[cells]] tables of the study; a factor a cell leaves out
      is at its first level.
    """
    if explicit is not None and design != "cells":
        raise ConfigError(f"[[cells]] tables need study.design = \"cells\", not {design!r}.")
    if design == "full_factorial":
        return list(itertools.product(*(factor.levels for factor in factors)))
    if not factors:
        raise ConfigError(f"study.design = {design!r} needs at least one factor in [factors].")
    if design == "one_at_a_time":
        return _one_at_a_time(factors)
    if design == "fractional":
        return _fractional(factors, header.get("resolution", 4))
    return _explicit_cells(factors, explicit)


def _one_at_a_time(factors: tuple[Factor, ...]) -> list[tuple[str, ...]]:
    baseline = tuple(factor.levels[0] for factor in factors)
    full = tuple(factor.levels[-1] for factor in factors)
    cells = [baseline]
    for index, factor in enumerate(factors):
        for level in factor.levels[1:]:
            cells.append(baseline[:index] + (level,) + baseline[index + 1 :])
    cells.append(full)
    for index, factor in enumerate(factors):
        cells.append(full[:index] + (factor.levels[0],) + full[index + 1 :])
    return list(dict.fromkeys(cells))


def _fractional(factors: tuple[Factor, ...], resolution: Any) -> list[tuple[str, ...]]:
    import pydoe

    many = [factor.name for factor in factors if len(factor.levels) != 2]
    if many:
        raise ConfigError(
            f"study.design = \"fractional\" needs two-level factors; {', '.join(many)} have more. "
            "Use full_factorial or split the factor."
        )
    if resolution not in (3, 4, 5) or isinstance(resolution, bool):
        raise ConfigError(f"study.resolution: expected 3, 4 or 5, got {resolution!r}.")
    try:
        matrix = pydoe.fracfact_by_res(len(factors), resolution)  # [runs, factors] of -1 and +1
    except ValueError as error:
        raise ConfigError(
            f"study.resolution = {resolution} is impossible with {len(factors)} factors ({error}); "
            "lower the resolution or add factors."
        ) from error
    return [tuple(factor.levels[int(sign > 0)] for factor, sign in zip(factors, row)) for row in matrix]


def _explicit_cells(factors: tuple[Factor, ...], explicit: Any) -> list[tuple[str, ...]]:
    if not isinstance(explicit, list) or not explicit:
        raise ConfigError('study.design = "cells" needs [[cells]] tables, one per cell, such as mixup = "off".')
    by_name = {factor.name: factor for factor in factors}
    cells = []
    for number, table in enumerate(explicit, start=1):
        if not isinstance(table, dict):
            raise ConfigError(f"cells[{number}]: expected a table of factor = level, got {table!r}.")
        unknown = sorted(set(table) - set(by_name))
        if unknown:
            raise ConfigError(f"cells[{number}]: unknown factor {unknown[0]!r}; the study's factors are {', '.join(by_name)}.")
        cell = []
        for factor in factors:
            level = str(table.get(factor.name, factor.levels[0]))
            if level not in factor.levels:
                raise ConfigError(
                    f"cells[{number}].{factor.name}: unknown level {level!r}; levels are {', '.join(factor.levels)}."
                )
            cell.append(level)
        cells.append(tuple(cell))
    return list(dict.fromkeys(cells))


def _expand(
    factors: tuple[Factor, ...], cells: list[tuple[str, ...]], seeds: tuple[int, ...], base: dict[str, Any]
) -> tuple[Trial, ...]:
    """Build the config of every cell of the design, times every seed."""
    trials = []
    for levels in cells:
        cell = {factor.name: level for factor, level in zip(factors, levels)}
        overrides: dict[str, Any] = {}
        for factor, level in zip(factors, levels):
            overrides.update(factor.overrides[level])
        values = merge(base, nest(overrides))
        cell_text = ", ".join(f"{k}={v}" for k, v in cell.items()) or "the baseline"
        for seed in seeds:
            try:
                config = from_dict(merge(values, {"seed": seed}))
            except ConfigError as error:
                raise ConfigError(f"cell {cell_text}: {error}") from error
            trials.append(Trial(cell, seed, config, config_hash(config)))
    return tuple(trials)


def trial_payload(trial: Trial) -> dict[str, Any]:
    """Return a trial as plain data, for Ray and MLflow."""
    return {
        "cell": trial.cell,
        "cell_id": trial.cell_id,
        "trial_id": trial.trial_id,
        "seed": trial.seed,
        "config": to_dict(trial.config),
        "config_hash": trial.config_hash,
    }
