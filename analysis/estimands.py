"""The quantities an attribution reports, each a linear contrast of cell means.

Every estimand is a weight vector over the cells of the full factorial
(`Estimands.weights`, [estimands, cells]), so one matrix product turns cell
means (or each seed's cell values, or bootstrap replicates) into all of
them at once.

Kinds, with the family their p-values are corrected in:
- `main` (family `factorial`): a level against the reference level of one
  factor, each averaged over every cell of the other factors.
- `interaction` (family `factorial`): the difference of differences, for
  example (A on, B on) - (A on, B off) - (A off, B on) + (A off, B off),
  averaged over the other factors. A three-factor interaction is the
  difference of that across the third factor, and so on.
- `shapley`, `banzhaf`: the value of each component in the game from the
  baseline (all first levels) to the full recipe (all last levels).
- `leave_one_out`: full recipe minus the full recipe with one factor at its
  first level (positive when the component helps the full recipe).
- `add_one_in`: the baseline with one factor at its last level, minus the
  baseline.
- `total`: full recipe minus baseline; the Shapley values sum to it.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from analysis import shapley
from analysis.design import Design

FAMILIES = {
    "main": "factorial",
    "interaction": "factorial",
    "shapley": "shapley",
    "banzhaf": "banzhaf",
    "leave_one_out": "leave_one_out",
    "add_one_in": "add_one_in",
    "total": "total",
}
ALL_FACTORS = "(all)"


@dataclasses.dataclass(frozen=True)
class Estimand:
    """The quantity behind one row of the attribution table."""

    kind: str
    term: str  # model term (`mixup`, `mixup:source_loss`) or ALL_FACTORS
    factor: str  # same as term, kept as the table's `factor` column
    level: str  # levels joined by ':' for interactions
    reference: str

    @property
    def family(self) -> str:
        return FAMILIES[self.kind]


@dataclasses.dataclass
class Estimands:
    """The estimands of a design and their [estimands, cells] weights.

    `declined` maps the row of an estimand that no data can give (its
    weights are NaN) to the reason.
    """

    items: list[Estimand]
    weights: np.ndarray
    declined: dict[int, str] = dataclasses.field(default_factory=dict)


def build_estimands(design: Design, kinds: tuple[str, ...] = tuple(FAMILIES)) -> Estimands:
    """Build the weight vectors of every estimand of `kinds` for `design`."""
    unknown = set(kinds) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown estimand kinds {sorted(unknown)}; expected some of {', '.join(FAMILIES)}.")
    items, rows, declined = [], [], {}
    for kind in kinds:
        for item, row in _BUILDERS[kind](design, kind):
            if not np.isfinite(row).all():
                declined[len(items)] = (
                    f"exact {kind} values are computed for at most {shapley.MAX_PLAYERS} factors, "
                    f"and this study has {len(design.names)}"
                )
            items.append(item)
            rows.append(row)
    weights = np.array(rows) if rows else np.zeros((0, design.cell_count))
    return Estimands(items, weights, declined)


def _factorial_contrasts(design: Design, kind: str):
    """Yield main effects (kind `main`) or interactions (kind `interaction`)."""
    for term in design.terms:
        if (term.order == 1) != (kind == "main"):
            continue
        indices = [design.names.index(name) for name in term.factors]
        choices = [range(1, design.level_counts[index]) for index in indices]
        for levels in itertools.product(*choices):
            yield _interaction_estimand(design, kind, term.factors, indices, levels)


def _interaction_estimand(
    design: Design, kind: str, names: tuple[str, ...], indices: list[int], levels: tuple[int, ...]
):
    """Return the difference-of-differences contrast of `levels` against the references."""
    # +1 at the level, -1 at the reference, 0 elsewhere, multiplied across the
    # term's factors: the r-th order difference. Other factors get uniform
    # weights, which averages over them.
    weights = np.ones(design.cell_count)
    for index, level in zip(indices, levels):
        column = design.cells[:, index]
        weights *= (column == level).astype(float) - (column == 0).astype(float)
    for index, count in enumerate(design.level_counts):
        if index not in indices:
            weights /= count
    item = Estimand(
        kind=kind,
        term=":".join(names),
        factor=":".join(names),
        level=":".join(design.factors[name][level] for name, level in zip(names, levels)),
        reference=":".join(design.factors[name][0] for name in names),
    )
    return item, weights


def _game_values(design: Design, kind: str):
    """Yield the Shapley or Banzhaf value of each factor (NaN weights past the size limit)."""
    if len(design.names) > shapley.MAX_PLAYERS:
        for name in design.names:
            yield _component(design, kind, name), np.full(design.cell_count, np.nan)
        return
    coalition_cells = design.coalition_cells()
    player_weights = shapley.value_weights(len(design.names), kind)  # [factors, coalitions]
    for player, name in enumerate(design.names):
        weights = np.zeros(design.cell_count)
        np.add.at(weights, coalition_cells, player_weights[player])
        yield _component(design, kind, name), weights


def _leave_one_out(design: Design, kind: str):
    full = design.full_recipe_cell
    for index, name in enumerate(design.names):
        weights = np.zeros(design.cell_count)
        weights[full] += 1.0
        weights[full - (design.level_counts[index] - 1) * design.strides[index]] -= 1.0
        yield _component(design, kind, name), weights


def _add_one_in(design: Design, kind: str):
    baseline = design.baseline_cell
    for index, name in enumerate(design.names):
        weights = np.zeros(design.cell_count)
        weights[baseline + (design.level_counts[index] - 1) * design.strides[index]] += 1.0
        weights[baseline] -= 1.0
        yield _component(design, kind, name), weights


def _total(design: Design, kind: str):
    weights = np.zeros(design.cell_count)
    weights[design.full_recipe_cell] += 1.0
    weights[design.baseline_cell] -= 1.0
    yield Estimand(kind, ALL_FACTORS, ALL_FACTORS, "full recipe", "baseline"), weights


def _component(design: Design, kind: str, name: str) -> Estimand:
    """Describe a per-component estimand: last level against first."""
    levels = design.factors[name]
    return Estimand(kind, name, name, levels[-1], levels[0])


_BUILDERS = {
    "main": _factorial_contrasts,
    "interaction": _factorial_contrasts,
    "shapley": _game_values,
    "banzhaf": _game_values,
    "leave_one_out": _leave_one_out,
    "add_one_in": _add_one_in,
    "total": _total,
}
