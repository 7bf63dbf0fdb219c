"""Checkpoints of the training state with orbax, so a restarted trial continues.

A checkpoint contains every leaf of `TrainState`: parameters, batch-norm
statistics, optimizer state, the step and the loop PRNG key. The data
position needs no storage because batch `n` is a pure function of the seed
and `n`. Only the last `keep` checkpoints are kept, and a study-wide disk
budget stops saving before the disk fills.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _folder_bytes(folder: pathlib.Path) -> int:
    if not folder.exists():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


class Checkpointer:
    """Save and restore a trial's training state under `directory`."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        every_steps: int,
        keep: int,
        budget_folder: pathlib.Path | None = None,
        budget_bytes: int = 0,
    ):
        self.every_steps = every_steps
        self.budget_folder = budget_folder
        self.budget_bytes = budget_bytes
        self._warned = False
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True)
        self.manager = ocp.CheckpointManager(directory.resolve(), options=options)

    @staticmethod
    def _to_saveable(state: Any) -> list[np.ndarray]:
        leaves = jax.tree.leaves(state)
        return [np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf) for leaf in leaves]

    def restore(self, state: Any) -> Any | None:
        """Return `state` filled from the latest checkpoint, or None if there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree.flatten(state)
        abstract = self._to_saveable(state)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        merged = []
        for template, value in zip(leaves, restored):
            if _is_key(template):
                merged.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(template)))
            else:
                merged.append(jax.numpy.asarray(value, dtype=template.dtype))
        log.info("Restored the training state of step %d from %s.", step, self.manager.directory)
        return jax.tree.unflatten(treedef, merged)

    def _within_budget(self) -> bool:
        if not self.budget_bytes or self.budget_folder is None:
            return True
        used = _folder_bytes(self.budget_folder)
        if used <= self.budget_bytes:
            return True
        if not self._warned:
            log.warning(
                "Checkpoints skipped: the study uses %.1f MB of its %.1f MB disk budget. Raise "
                "study.disk_budget_mb or free space under %s.",
                used / 1e6,
                self.budget_bytes / 1e6,
                self.budget_folder,
            )
            self._warned = True
        return False

    def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Save at multiples of `every_steps` (or when forced); returns whether it saved."""
        if not force and (self.every_steps <= 0 or step % self.every_steps):
            return False
        if step in set(self.manager.all_steps()) or not self._within_budget():
            return False
        self.manager.save(step, args=ocp.args.StandardSave(self._to_saveable(state)))
        self.manager.wait_until_finished()
        return True

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
