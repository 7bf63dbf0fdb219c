"""Shapley and Banzhaf values of the components of a recipe, through shapiq.

The game: the players are the factors, and the value of a coalition is
the metric of the cell that sets the factors in the coalition to their last
level and every other factor to its first. The empty coalition is the
baseline, the grand coalition the full recipe, so the Shapley values split
`full recipe - baseline` among the components.

Both values are linear in the game values. `value_weights` therefore calls
shapiq once per basis game and returns the matrix that maps any vector of
coalition values to the values of the players; bootstrap replicates then
cost one matrix product each instead of one shapiq call each.
"""

from __future__ import annotations

import functools

import numpy as np

# Exact values need every one of the 2**players coalitions; the weight
# matrix costs 2**players shapiq calls of 2**players evaluations each.
MAX_PLAYERS = 10
INDICES = {"shapley": "SV", "banzhaf": "BV"}


@functools.lru_cache(maxsize=32)
def value_weights(players: int, kind: str) -> np.ndarray:
    """Return the [players, 2**players] weights of the Shapley or Banzhaf value.

    Column `mask` belongs to the coalition whose members are the set bits of
    `mask`; `weights @ values` gives each player's value.
    """
    if kind not in INDICES:
        raise ValueError(f"unknown value {kind!r}; expected one of {', '.join(INDICES)}.")
    if not 1 <= players <= MAX_PLAYERS:
        raise ValueError(
            f"exact {kind} values of {players} players are not computed; the limit is {MAX_PLAYERS} players "
            "because the cost grows as 4**players."
        )
    # shapiq imports its approximators too, which takes seconds; load it only here.
    from shapiq.game_theory.exact import ExactComputer

    bits = 1 << np.arange(players)
    weights = np.zeros((players, 2**players))
    for mask in range(2**players):
        game = functools.partial(_basis_game, bits=bits, mask=mask)
        interaction_values = ExactComputer(game, n_players=players)(INDICES[kind], order=1)
        for player in range(players):
            weights[player, mask] = interaction_values.values[
                interaction_values.interaction_lookup[(player,)]
            ]
    weights.setflags(write=False)
    return weights


def _basis_game(coalitions: np.ndarray, bits: np.ndarray, mask: int) -> np.ndarray:
    """Value 1 for the coalition `mask` and 0 for every other coalition."""
    masks = np.asarray(coalitions, dtype=np.int64) @ bits  # [coalitions]
    return (masks == mask).astype(float)


def game_values(values: np.ndarray, kind: str) -> np.ndarray:
    """Return each player's value of the game whose coalition values are `values`.

    `values`: [2**players, ...]; coalitions indexed by bit mask as above.
    Result: [players, ...].
    """
    players = int(np.log2(values.shape[0]))
    if 2**players != values.shape[0]:
        raise ValueError(f"a game over n players has 2**n coalition values, got {values.shape[0]}.")
    return np.tensordot(value_weights(players, kind), values, axes=1)
