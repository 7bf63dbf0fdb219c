"""`ablate bench`: measured speed of the trainer, the input pipeline and a study.

Every figure is written to JSON and to a Markdown page together with the
machine and the command that produced it, so a number can be checked by
running the same command again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Any

import numpy as np

from pipeline import config as config_lib


@dataclasses.dataclass
class BenchOptions:
    """Settings of one benchmark run: presets, step counts and output folder."""

    data_root: pathlib.Path
    output: pathlib.Path
    presets: tuple[str, ...] = ("tiny", "small", "efficientnet_b0", "efficientnet_b3")
    steps: int = 10
    batch_size: int = 16
    pack_seeds: int = 3
    study_steps: int = 40
    run_study: bool = True


def _machine() -> dict[str, Any]:
    import jax

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(device) for device in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _batch(config: config_lib.Config, num_classes: int, seeds: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    size = config.train.batch_size
    shape = (seeds, size) if seeds else (size,)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, shape)]
    return {
        "audio": rng.normal(0, 0.1, shape + (config.audio.window_samples,)).astype(np.float32),
        "labels": labels,
        "secondary": np.zeros_like(labels),
        "source": rng.integers(0, 200, shape).astype(np.int32),
    }


def _time_steps(step_fn, state, batch, steps: int) -> tuple[float, float, Any]:
    """Return (compile seconds, seconds per step, state) for `steps` timed steps."""
    import jax

    began = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    return compile_seconds, (time.perf_counter() - began) / steps, state


def bench_presets(options: BenchOptions) -> list[dict[str, Any]]:
    """Measure compile time and training examples per second of each preset."""
    from pipeline import train

    rows = []
    for preset in options.presets:
        batch_size = options.batch_size if preset in ("tiny", "small") else max(2, options.batch_size // 4)
        steps = options.steps if preset in ("tiny", "small") else max(2, options.steps // 5)
        config = config_lib.from_dict({"model": {"backbone": preset}, "train": {"batch_size": batch_size}})
        model, state = train.create(config, 32, 205)
        step_fn, _ = train.jit_functions(model)
        compile_seconds, step_seconds, _ = _time_steps(step_fn, state, _batch(config, 32), steps)
        rows.append(
            {
                "preset": preset,
                "batch_size": batch_size,
                "timed_steps": steps,
                "compile_seconds": compile_seconds,
                "step_seconds": step_seconds,
                "examples_per_second": batch_size / step_seconds,
            }
        )
        print(f"  {preset}: {batch_size / step_seconds:.1f} examples/s, compile {compile_seconds:.1f} s", flush=True)
    return rows


def bench_input(options: BenchOptions, cache_dir: pathlib.Path) -> dict[str, Any]:
    """Measure the grain pipeline alone: batches of real InsectSet32 windows per second."""
    from pipeline import data

    config = config_lib.from_dict({"data": {"root": str(options.data_root)}, "train": {"batch_size": options.batch_size}})
    dataset = data.prepare_dataset(config, options.data_root, cache_dir)
    batches = data.train_batches(dataset, config)
    next(batches)
    count = 50
    began = time.perf_counter()
    for _ in range(count):
        next(batches)
    seconds = time.perf_counter() - began
    return {"batches": count, "batch_size": options.batch_size, "examples_per_second": count * options.batch_size / seconds}


def bench_evaluation(options: BenchOptions, cache_dir: pathlib.Path) -> dict[str, Any]:
    """Measure one tiny-preset trial's evaluation: every default task."""
    from pipeline import data, evaluation, train

    config = config_lib.from_dict({"data": {"root": str(options.data_root)}})
    dataset = data.prepare_dataset(config, options.data_root, cache_dir)
    model, state = train.create(config, dataset.num_classes, dataset.num_sources)
    _, predict_fn = train.jit_functions(model)
    predict = functools.partial(predict_fn, state.params, state.model_state)
    began = time.perf_counter()
    scores = evaluation.run_tasks(dataset, config, predict, options.output / "eval-artifacts")
    return {"tasks": list(config.eval.tasks), "seconds": time.perf_counter() - began, "metrics": len(scores)}


def bench_packing(options: BenchOptions) -> dict[str, Any]:
    """Compare S separate tiny-preset steps with one vmapped step of S seeds."""
    import jax

    from pipeline import packing, train

    configs = [config_lib.from_dict({"seed": seed, "train": {"batch_size": options.batch_size}}) for seed in range(options.pack_seeds)]
    model, state = train.create(configs[0], 32, 205)
    step_fn, _ = train.jit_functions(model)
    _, single_seconds, _ = _time_steps(step_fn, state, _batch(configs[0], 32), options.steps)
    packed_state = packing.stack([train.create(config, 32, 205)[1] for config in configs])
    packed_fn = jax.jit(jax.vmap(functools.partial(train.train_step, model)), donate_argnums=0)
    _, packed_seconds, _ = _time_steps(packed_fn, packed_state, _batch(configs[0], 32, seeds=len(configs)), options.steps)
    separate = options.batch_size / single_seconds
    packed = options.batch_size * len(configs) / packed_seconds
    return {"seeds": len(configs), "separate_examples_per_second": separate, "packed_examples_per_second": packed, "ratio": packed / separate}


def bench_study(options: BenchOptions) -> dict[str, Any]:
    """Run a small study and compare its wall time with its trials' own training time."""
    from analysis import load
    from pipeline import runner
    from pipeline import study as study_lib

    folder = options.output / "study"
    folder.mkdir(parents=True, exist_ok=True)
    study_file = folder / "bench.toml"
    study_file.write_text(
        f"""[study]
name = "bench"
seeds = [0, 1]
[config.data]
root = "{options.data_root}"
[config.train]
steps = {options.study_steps}
log_every = 10
[factors]
source_loss = ["off", "on"]
"""
    )
    study = study_lib.load_study(study_file)
    result = runner.run_study(study, folder / "runs")
    runs = load.load_study(result.study_dir).finished
    train_seconds = float(runs["time/train_seconds"].sum())
    eval_seconds = float(runs["time/eval_seconds"].sum())
    compile_seconds = float(runs["time/compile_seconds"].sum())
    slots = max(1, int((os.cpu_count() or 1) // study.cpus_per_trial))
    capacity = result.wall_seconds * slots
    return {
        "trials": len(study.trials),
        "parallel_slots": slots,
        "wall_seconds": result.wall_seconds,
        "sum_train_seconds": train_seconds,
        "sum_eval_seconds": eval_seconds,
        "sum_compile_seconds": compile_seconds,
        "overhead_share": 1.0 - (train_seconds + eval_seconds) / capacity,
        "overhead_share_excluding_compile": 1.0 - (train_seconds + eval_seconds + compile_seconds) / capacity,
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmark",
        "",
        f"Command: `{results['command']}`",
        f"Date: {results['date']}",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
        f"jax {results['machine']['jax']}, devices {', '.join(results['machine']['devices'])}",
        "",
        "## Training throughput per preset (one process, all CPUs)",
        "",
        "| preset | batch | examples/s | step (s) | compile (s) |",
        "|---|---|---|---|---|",
    ]
    for row in results.get("presets", []):
        lines.append(
            f"| {row['preset']} | {row['batch_size']} | {row['examples_per_second']:.1f} | "
            f"{row['step_seconds']:.3f} | {row['compile_seconds']:.1f} |"
        )
    if "input" in results:
        tiny = next((row for row in results.get("presets", []) if row["preset"] == "tiny"), None)
        ratio = results["input"]["examples_per_second"] / tiny["examples_per_second"] if tiny else float("nan")
        lines += ["", f"Input pipeline alone: {results['input']['examples_per_second']:.0f} examples/s, {ratio:.1f}x what the tiny preset consumes."]
    if "evaluation" in results:
        lines += ["", f"Evaluation of one tiny-preset trial ({', '.join(results['evaluation']['tasks'])}): {results['evaluation']['seconds']:.1f} s."]
    if "packing" in results:
        packed = results["packing"]
        lines += [
            "",
            f"Seed packing, {packed['seeds']} seeds of the tiny preset: {packed['packed_examples_per_second']:.1f} examples/s "
            f"packed against {packed['separate_examples_per_second']:.1f} separate, ratio {packed['ratio']:.2f}.",
        ]
    if "study" in results:
        study = results["study"]
        lines += [
            "",
            f"Small study ({study['trials']} trials, {study['parallel_slots']} at a time): wall {study['wall_seconds']:.0f} s; "
            f"trials trained {study['sum_train_seconds']:.0f} s, evaluated {study['sum_eval_seconds']:.0f} s and compiled "
            f"{study['sum_compile_seconds']:.0f} s in all. Orchestration and tracking overhead: "
            f"{study['overhead_share']:.0%} of the capacity, {study['overhead_share_excluding_compile']:.0%} without compilation.",
        ]
    return "\n".join(lines) + "\n"


def run(options: BenchOptions) -> dict[str, Any]:
    """Run every measurement and write benchmark.json and benchmark.md under options.output."""
    options.output.mkdir(parents=True, exist_ok=True)
    cache_dir = options.output / "cache"
    results: dict[str, Any] = {
        "command": " ".join(shlex.quote(part) for part in ["ablate", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": _machine(),
    }
    print("Training throughput per preset:", flush=True)
    results["presets"] = bench_presets(options)
    results["input"] = bench_input(options, cache_dir)
    print(f"Input pipeline: {results['input']['examples_per_second']:.0f} examples/s", flush=True)
    results["evaluation"] = bench_evaluation(options, cache_dir)
    print(f"Evaluation: {results['evaluation']['seconds']:.1f} s", flush=True)
    results["packing"] = bench_packing(options)
    print(f"Seed packing ratio: {results['packing']['ratio']:.2f}", flush=True)
    if options.run_study:
        results["study"] = bench_study(options)
    (options.output / "benchmark.json").write_text(json.dumps(results, indent=2))
    (options.output / "benchmark.md").write_text(_markdown(results))
    return results
