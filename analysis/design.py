"""The factorial design of a study: cells, model terms and aliasing.

A study crosses every level of every factor, so its cells are the rows of a
general full factorial. The model of the cell means is the saturated
factorial model with sum-to-zero contrasts: an intercept, a block of
columns for each main effect and one for each interaction. A fractional
design, or one whose cells lost every trial, observes only some rows of
that model, and `alias_structure` works out which terms those rows can
still separate.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from pydoe import fullfact

# Relative tolerance for treating a least-squares coefficient or a matrix
# rank contribution as zero.
TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class Term:
    """A main effect (one factor) or an interaction (several) of the model."""

    factors: tuple[str, ...]

    @property
    def name(self) -> str:
        return ":".join(self.factors)

    @property
    def order(self) -> int:
        return len(self.factors)


class Design:
    """The full factorial over a study's factors, with its model matrix.

    `factors` maps each factor to its levels; the first level is the
    reference (baseline) and the last is the level of the full recipe.
    """

    def __init__(self, factors: dict[str, list[str]]):
        _check_factors(factors)
        self.factors = {name: [str(level) for level in levels] for name, levels in factors.items()}
        self.names = list(self.factors)
        self.level_counts = [len(levels) for levels in self.factors.values()]

        # [cells, factors] level indices; pydoe varies the first factor fastest.
        self.cells = fullfact(self.level_counts).astype(np.int64)
        self.strides = np.cumprod([1] + self.level_counts[:-1])
        self.terms = [
            Term(tuple(self.names[index] for index in combination))
            for order in range(1, len(self.names) + 1)
            for combination in itertools.combinations(range(len(self.names)), order)
        ]
        self.model_matrix, self.term_columns = self._build_model_matrix()

    @property
    def cell_count(self) -> int:
        return len(self.cells)

    def cell_index(self, levels: dict[str, str]) -> int:
        """Return the row of the cell with these factor levels."""
        indices = [self.factors[name].index(str(levels[name])) for name in self.names]
        return int(np.dot(indices, self.strides))

    def cell_label(self, cell: int) -> str:
        """Return a cell as `factor=level,...`, the form of the `ablate.cell` tag."""
        return ",".join(
            f"{name}={self.factors[name][index]}" for name, index in zip(self.names, self.cells[cell])
        )

    @property
    def baseline_cell(self) -> int:
        return 0

    @property
    def full_recipe_cell(self) -> int:
        return self.cell_count - 1

    def coalition_cells(self) -> np.ndarray:
        """Return the cell of each coalition of the baseline-to-full-recipe game.

        Coalition `mask` (bit i for factor i) sets the factors in it to their
        last level and the others to their first. Result: [2**factors] cells.
        """
        masks = np.arange(2 ** len(self.names))
        present = (masks[:, None] >> np.arange(len(self.names))) & 1  # [coalitions, factors]
        last = np.array(self.level_counts) - 1
        return (present * last) @ self.strides

    def _build_model_matrix(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Build the [cells, cells] sum-to-zero model matrix and each term's columns.

        Each factor with L levels gets L - 1 sum-to-zero contrast columns, with
        the last level coded -1 as patsy's `Sum` does. An interaction's columns
        are the products of its factors' columns.
        """
        contrasts = {
            name: np.vstack([np.eye(count - 1), -np.ones((1, count - 1))])  # [levels, levels - 1]
            for name, count in zip(self.names, self.level_counts)
        }
        blocks = [np.ones((self.cell_count, 1))]
        term_columns = {"(Intercept)": np.array([0])}
        start = 1
        for term in self.terms:
            block = np.ones((self.cell_count, 1))
            for name in term.factors:
                factor_block = contrasts[name][self.cells[:, self.names.index(name)]]
                block = np.einsum("ca,cb->cab", block, factor_block).reshape(self.cell_count, -1)
            blocks.append(block)
            term_columns[term.name] = np.arange(start, start + block.shape[1])
            start += block.shape[1]
        return np.hstack(blocks), term_columns


def _check_factors(factors: dict[str, list[str]]) -> None:
    if not factors:
        raise ValueError(
            "the study has no factors; a factorial analysis needs at least one factor with two levels."
        )
    for name, levels in factors.items():
        if len(levels) < 2:
            raise ValueError(f"factor {name!r} has levels {levels!r}; each factor needs at least two levels.")
        if len({str(level) for level in levels}) != len(levels):
            raise ValueError(f"factor {name!r} has repeated levels {levels!r}; list each level once.")


@dataclasses.dataclass
class AliasStructure:
    """The model terms that the observed cells can estimate, and the terms each absorbs.

    `included` terms are estimated, in order of increasing interaction
    order. An `excluded` term is not estimable once the lower-order terms
    are in the model; `aliases[name]` lists the included terms whose
    estimates absorb it.
    """

    observed: np.ndarray  # [cells] bool: the cell has at least one finished trial
    included: list[str]
    excluded: list[str]
    aliases: dict[str, list[str]]
    columns: np.ndarray  # model-matrix columns of the included terms

    @property
    def complete(self) -> bool:
        return bool(self.observed.all())


def alias_structure(design: Design, observed: np.ndarray) -> AliasStructure:
    """Find the terms that the observed cells can estimate, lowest order first.

    Terms enter in hierarchical order: main effects, then two-way
    interactions, and so on. A term whose columns do not all add to the
    rank of the observed rows is aliased with terms already in the model
    and is excluded. This is the usual working assumption for fractional
    factorials: higher-order interactions are the ones taken as negligible.
    """
    # Hand-written because pydoe's `fracfact_aliasing` covers only regular
    # two-level fractions, while this must also handle factors with more
    # levels and cells that lost all their trials.
    rows = design.model_matrix[observed]
    included, excluded = ["(Intercept)"], []
    columns = list(design.term_columns["(Intercept)"])
    rank = 1
    for term in design.terms:
        candidate = columns + list(design.term_columns[term.name])
        candidate_rank = np.linalg.matrix_rank(rows[:, candidate])
        if candidate_rank == rank + len(design.term_columns[term.name]):
            included.append(term.name)
            columns, rank = candidate, candidate_rank
        else:
            excluded.append(term.name)

    aliases = {name: _absorbing_terms(design, rows, included, columns, name) for name in excluded}
    return AliasStructure(observed, included, excluded, aliases, np.array(columns))


def _absorbing_terms(
    design: Design, rows: np.ndarray, included: list[str], columns: list[int], name: str
) -> list[str]:
    """Return the included terms onto which the excluded term `name` projects."""
    # [included columns, columns of the excluded term]: the alias matrix.
    loadings = np.linalg.lstsq(rows[:, columns], rows[:, design.term_columns[name]], rcond=None)[0]
    position = {column: index for index, column in enumerate(columns)}
    absorbing = []
    for other in included:
        other_rows = [position[column] for column in design.term_columns[other]]
        if np.abs(loadings[other_rows]).max() > TOLERANCE:
            absorbing.append(other)
    return absorbing
