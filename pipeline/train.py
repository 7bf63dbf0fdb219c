"""Training and evaluation of one variant: the one entry point that trains.

`train_and_evaluate(config, workdir, report)` is what the command line, the
Ray trainable and the tests call. It reports metrics through the `report`
callback and never imports Ray or MLflow. `train_step` is pure and jitted
with its state donated; the loop only decides when to log and evaluate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pipeline import checkpoints, compilation, data, evaluation, losses, mixup
from pipeline.config import Config, distillation_start, to_dict
from pipeline.frontend import LogMel
from pipeline.models import Classifier

log = logging.getLogger(__name__)

# report(metrics, step) receives scalar metrics; step is None for final ones.
Report = Callable[[dict[str, float], "int | None"], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, step: int, metrics: dict[str, float]):
        self.step = step
        self.metrics = metrics
        super().__init__(
            f"non-finite loss at step {step} (metrics: {metrics}). Lower train.learning_rate "
            "or train.gradient_clip_norm, or check the input audio for silence or clipping."
        )


@flax.struct.dataclass
class TrainState:
    """Everything that changes from one step to the next."""

    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of nnx.Param
    model_state: Any  # nnx.State of everything else (batch norm statistics)
    opt_state: Any
    key: jax.Array  # the loop key; step keys are fold_in(key, step)


@dataclasses.dataclass(frozen=True)
class Model:
    """The fixed parts of a run: graph, frontend and optimizer."""

    graphdef: Any
    frontend: LogMel
    optimizer: optax.GradientTransformation
    config: Config
    num_classes: int
    num_sources: int


def make_optimizer(config: Config) -> optax.GradientTransformation:
    train = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=min(train.warmup_steps, max(train.steps - 1, 0)),
        decay_steps=train.steps,
        end_value=train.learning_rate * 0.01,
    )
    return optax.chain(
        optax.clip_by_global_norm(train.gradient_clip_norm),
        optax.adamw(schedule, weight_decay=train.weight_decay),
    )


def learning_rate(config: Config, step: int) -> float:
    train = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.learning_rate, min(train.warmup_steps, max(train.steps - 1, 0)), train.steps, train.learning_rate * 0.01
    )
    return float(schedule(step))


def create(config: Config, num_classes: int, num_sources: int) -> tuple[Model, TrainState]:
    """Initialise the model and optimizer from the config's seed."""
    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    optimizer = make_optimizer(config)

    def build(key: jax.Array) -> tuple[Any, Any, Any]:
        network = Classifier(config, num_classes, num_sources, rngs=nnx.Rngs(params=key))
        _, params, model_state = nnx.split(network, nnx.Param, ...)
        return params, model_state, optimizer.init(params)

    # Built eagerly, every initializer is its own small XLA program, and
    # the tiny preset spends about 12 s compiling them. One jitted program
    # is compiled once and then comes from the persistent cache.
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Classifier(config, num_classes, num_sources, rngs=nnx.Rngs(params=0))))
    params, model_state, opt_state = jax.jit(build)(init_key)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        key=loop_key,
    )
    frontend = LogMel(config.frontend, config.audio.sample_rate_hz)
    return Model(graphdef, frontend, optimizer, config, num_classes, num_sources), state


def compute_loss(
    model: Model, params: Any, model_state: Any, batch: dict[str, jax.Array], key: jax.Array, step: jax.Array
) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """Return the total loss, the updated model state and the loss terms."""
    config = model.config
    mixup_key, dropout_key = jax.random.split(key)
    audio = batch["audio"]  # [batch, samples]
    labels, secondary = batch["labels"], batch["secondary"]  # [batch, classes]
    terms: dict[str, jax.Array] = {}

    if config.source_loss.enabled:
        sources = jax.nn.one_hot(batch["source"], model.num_sources)  # [batch, sources]
    if config.mixup.max_sources > 1:
        targets = {"labels": labels, "secondary": secondary}
        if config.source_loss.enabled:
            targets["sources"] = sources
        audio, mixed, counts = mixup.mix(mixup_key, config.mixup, audio, targets)
        labels, secondary = mixed["labels"], mixed["secondary"]
        if config.source_loss.enabled:
            sources = mixed["sources"]
        terms["mixup_sources"] = counts.mean()

    # copy=True gives fresh Variables at this trace level, so batch norm can
    # update its statistics inside the gradient transform.
    network = nnx.merge(model.graphdef, params, model_state, copy=True)
    features = model.frontend(audio)  # [batch, frames, mel_bins]
    outputs = network(features, training=True, dropout_key=dropout_key)
    terms["classifier"] = losses.classification_loss(outputs["logits"], labels, secondary, config.labels)
    total = terms["classifier"]

    if config.source_loss.enabled:
        terms["source"] = losses.softmax_cross_entropy(outputs["source_logits"], sources).mean()
        total = total + config.source_loss.weight * terms["source"]
    if config.prototype.enabled:
        terms["prototype"] = losses.classification_loss(outputs["prototype_logits"], labels, secondary, config.labels)
        terms["orthogonality"] = network.prototype.orthogonality_loss()
        total = total + config.prototype.weight * terms["prototype"]
        total = total + config.prototype.orthogonality_weight * terms["orthogonality"]
    if config.distillation.enabled:
        active = (step >= distillation_start(config)).astype(jnp.float32)
        terms["distillation"] = active * losses.distillation_loss(
            outputs["logits"], outputs["prototype_logits"], config.distillation.temperature, config.labels.loss
        )
        total = total + config.distillation.weight * terms["distillation"]

    terms["loss"] = total
    _, _, new_model_state = nnx.split(network, nnx.Param, ...)
    return total, (new_model_state, terms)


def train_step(model: Model, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """Apply one optimizer update. Pure: the step key is fold_in(state.key, step)."""
    key = jax.random.fold_in(state.key, state.step)
    gradient_fn = jax.value_and_grad(compute_loss, argnums=1, has_aux=True)
    (_, (model_state, terms)), gradients = gradient_fn(model, state.params, state.model_state, batch, key, state.step)
    updates, opt_state = model.optimizer.update(gradients, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {f"train/{name}": value for name, value in terms.items()}
    metrics["train/gradient_norm"] = optax.global_norm(gradients)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
    return new_state, metrics


def predict(model: Model, params: Any, model_state: Any, audio: jax.Array) -> dict[str, jax.Array]:
    """Return logits and embeddings of windows [batch, samples] in inference mode."""
    network = nnx.merge(model.graphdef, params, model_state)
    outputs = network(model.frontend(audio), training=False)
    outputs.pop("spatial")
    return outputs


def jit_functions(model: Model) -> tuple[Callable, Callable]:
    step_fn = jax.jit(functools.partial(train_step, model), donate_argnums=0)
    predict_fn = jax.jit(functools.partial(predict, model))
    return step_fn, predict_fn


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.tree.map(lambda *values: jnp.stack(values).mean(), *history)
    return {name: float(value) for name, value in jax.device_get(stacked).items()}


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """How often a trial saves its state, and how much disk its study may use.

    These do not change what a run computes, so they are not part of Config
    and do not change its hash.
    """

    every_steps: int = 100
    keep: int = 2
    # Folder whose total size counts against the budget; 0 bytes means no limit.
    budget_folder: pathlib.Path | None = None
    budget_bytes: int = 0


def train(
    config: Config,
    dataset: data.Dataset,
    report: Report,
    model: Model,
    state: TrainState,
    checkpointer: checkpoints.Checkpointer | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """Run the training loop from `state.step` (or the latest checkpoint) to `config.train.steps`."""
    step_fn, _ = jit_functions(model)
    if checkpointer is not None:
        state = checkpointer.restore(state) or state
    start = int(state.step)
    batches = data.train_batches(dataset, config, start_step=start)
    history: list[dict[str, jax.Array]] = []
    timing = {"time/compile_seconds": 0.0, "time/train_seconds": 0.0}
    interval_start = time.perf_counter()
    interval_examples = 0
    last: dict[str, float] = {}

    for step in range(start, config.train.steps):
        batch = next(batches)
        began = time.perf_counter()
        state, metrics = step_fn(state, batch)
        if step == start:
            jax.block_until_ready(state.step)
            timing["time/compile_seconds"] = time.perf_counter() - began
            interval_start = time.perf_counter()
            continue
        history.append(metrics)
        interval_examples += config.train.batch_size

        if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
            last = _mean_metrics(history)
            history = []
            elapsed = time.perf_counter() - interval_start
            timing["time/train_seconds"] += elapsed
            last["train/learning_rate"] = learning_rate(config, step)
            last["time/examples_per_second"] = interval_examples / max(elapsed, 1e-9)
            if not np.isfinite(last["train/loss"]):
                raise NonFiniteLossError(step + 1, last)
            report(last, step + 1)
            interval_start = time.perf_counter()
            interval_examples = 0
        if checkpointer is not None:
            checkpointer.maybe_save(step + 1, state, force=step + 1 == config.train.steps)
    timing["train/resumed_from_step"] = float(start)
    return state, {**last, **timing}


def train_and_evaluate(
    config: Config,
    workdir: str | pathlib.Path,
    report: Report | None = None,
    *,
    base_dir: str | pathlib.Path = ".",
    cache_dir: str | pathlib.Path | None = None,
    checkpoint: CheckpointOptions | None = None,
) -> dict[str, float]:
    """Train one variant, evaluate it on the held-out split and return final metrics.

    `workdir` receives `config.json`, `metrics.json` and, with `checkpoint`
    options, `checkpoints/`, from which a rerun in the same workdir resumes.
    `base_dir` resolves a relative data root, and decoded audio is cached in
    `cache_dir` (default: `workdir/cache`).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    report = report or (lambda metrics, step: None)

    compiled_before = compilation.snapshot()
    began = time.perf_counter()
    dataset = data.prepare_dataset(config, pathlib.Path(base_dir), pathlib.Path(cache_dir or workdir / "cache"))
    data_seconds = time.perf_counter() - began
    log.info("Training on %d recordings of %d classes.", len(dataset.train), dataset.num_classes)

    began = time.perf_counter()
    model, state = create(config, dataset.num_classes, dataset.num_sources)
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - began
    checkpointer = None
    if checkpoint is not None:
        checkpointer = checkpoints.Checkpointer(
            workdir / "checkpoints",
            every_steps=checkpoint.every_steps,
            keep=checkpoint.keep,
            budget_folder=checkpoint.budget_folder,
            budget_bytes=checkpoint.budget_bytes,
        )
    try:
        state, train_metrics = train(config, dataset, report, model, state, checkpointer)
    finally:
        if checkpointer is not None:
            checkpointer.close()

    began = time.perf_counter()
    _, predict_fn = jit_functions(model)
    predict = functools.partial(predict_fn, state.params, state.model_state)
    scores = evaluation.run_tasks(dataset, config, predict, workdir / "artifacts")
    scores["time/eval_seconds"] = time.perf_counter() - began
    scores["time/data_seconds"] = data_seconds
    scores["time/init_seconds"] = init_seconds
    scores.update((compilation.snapshot() - compiled_before).as_metrics())

    final = {**train_metrics, **scores}
    report(final, None)
    (workdir / "metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    return final
