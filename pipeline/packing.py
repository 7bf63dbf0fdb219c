"""Seed packing: train the seeds of one cell together in a single program.

The training states of S seeds are stacked along a new leading axis and one
`jax.vmap` of `train_step` updates all of them. Each seed keeps its own
initialisation, PRNG stream and data order, so the result equals S separate
runs up to floating-point reordering, while small models use the hardware
better and the program is compiled once instead of S times.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import data, evaluation, train
from pipeline.config import Config, to_dict


def check_packable(configs: Sequence[Config]) -> None:
    """Raise ValueError unless the configs differ only in their seed."""
    if not configs:
        raise ValueError("seed packing needs at least one config")
    reference = {key: value for key, value in to_dict(configs[0]).items() if key != "seed"}
    for config in configs[1:]:
        other = {key: value for key, value in to_dict(config).items() if key != "seed"}
        if other != reference:
            raise ValueError("seed packing needs configs that differ only in their seed")
    seeds = [config.seed for config in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed packing needs distinct seeds, got {seeds}")


def stack(trees: Sequence) -> object:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: object, index: int) -> object:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _packed_batch(iterators: list) -> dict[str, np.ndarray]:
    batches = [next(iterator) for iterator in iterators]
    return {name: np.stack([batch[name] for batch in batches]) for name in batches[0]}  # [seeds, batch, ...]


def _per_seed_means(history: list[dict[str, jax.Array]], seeds: int) -> list[dict[str, float]]:
    stacked = jax.device_get(jax.tree.map(lambda *values: jnp.stack(values).mean(axis=0), *history))
    return [{name: float(value[index]) for name, value in stacked.items()} for index in range(seeds)]


def train_packed(
    configs: Sequence[Config], dataset: data.Dataset, reports: Sequence[train.Report]
) -> tuple[train.Model, list[train.TrainState], list[dict[str, float]]]:
    """Train every config (one per seed) in one vmapped loop; returns the final states."""
    check_packable(configs)
    config = configs[0]
    model, _ = train.create(config, dataset.num_classes, dataset.num_sources)
    packed = stack([train.create(c, dataset.num_classes, dataset.num_sources)[1] for c in configs])
    step_fn = jax.jit(jax.vmap(functools.partial(train.train_step, model)), donate_argnums=0)
    iterators = [data.train_batches(dataset, c) for c in configs]

    history: list[dict[str, jax.Array]] = []
    timing = {"time/compile_seconds": 0.0, "time/train_seconds": 0.0}
    last: list[dict[str, float]] = [{} for _ in configs]
    interval_start, interval_examples = time.perf_counter(), 0
    for step in range(config.train.steps):
        batch = _packed_batch(iterators)
        began = time.perf_counter()
        packed, metrics = step_fn(packed, batch)
        if step == 0:
            jax.block_until_ready(packed.step)
            timing["time/compile_seconds"] = time.perf_counter() - began
            interval_start = time.perf_counter()
            continue
        history.append(metrics)
        interval_examples += config.train.batch_size * len(configs)
        if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
            last = _per_seed_means(history, len(configs))
            history = []
            elapsed = time.perf_counter() - interval_start
            timing["time/train_seconds"] += elapsed
            for seed_metrics, report in zip(last, reports):
                seed_metrics["train/learning_rate"] = train.learning_rate(config, step)
                seed_metrics["time/examples_per_second"] = interval_examples / max(elapsed, 1e-9)
                if not np.isfinite(seed_metrics["train/loss"]):
                    raise train.NonFiniteLossError(step + 1, seed_metrics)
                report(seed_metrics, step + 1)
            interval_start, interval_examples = time.perf_counter(), 0
    states = [unstack(packed, index) for index in range(len(configs))]
    return model, states, [{**metrics, **timing} for metrics in last]


def train_and_evaluate_packed(
    configs: Sequence[Config],
    workdirs: Sequence[str | pathlib.Path],
    reports: Sequence[train.Report],
    *,
    base_dir: str | pathlib.Path = ".",
    cache_dir: str | pathlib.Path,
) -> list[dict[str, float]]:
    """Train the seeds of one cell together, then evaluate each seed; returns final metrics per seed."""
    workdirs = [pathlib.Path(folder) for folder in workdirs]
    for config, folder in zip(configs, workdirs):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    dataset = data.prepare_dataset(configs[0], pathlib.Path(base_dir), pathlib.Path(cache_dir))
    model, states, train_metrics = train_packed(configs, dataset, reports)

    _, predict_fn = train.jit_functions(model)
    finals = []
    for config, state, metrics, folder, report in zip(configs, states, train_metrics, workdirs, reports):
        began = time.perf_counter()
        predict = functools.partial(predict_fn, state.params, state.model_state)
        scores = evaluation.run_tasks(dataset, config, predict, folder / "artifacts")
        scores["time/eval_seconds"] = time.perf_counter() - began
        final = {**metrics, **scores, "train/packed_seeds": float(len(configs))}
        report(final, None)
        (folder / "metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
        finals.append(final)
    return finals


@dataclasses.dataclass(frozen=True)
class PackedThroughput:
    """Examples per second of separate and packed training of the same seeds."""

    seeds: int
    separate: float
    packed: float

    @property
    def ratio(self) -> float:
        return self.packed / self.separate
