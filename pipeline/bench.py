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
    # A study file to run and measure instead of the built-in small study.
    study_file: pathlib.Path | None = None
    # A finished study's folder to measure without running anything.
    study_dir: pathlib.Path | None = None


def _machine() -> dict[str, Any]:
    import jax

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(device) for device in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": " ".join(f"{value:.2f}" for value in os.getloadavg()),
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


# The parts of a trial that are its own work, as the trainer times them.
TRIAL_WORK = ("time/data_seconds", "time/init_seconds", "time/compile_seconds", "time/train_seconds", "time/eval_seconds")


def _peak_concurrency(spans: list[tuple[float, float]]) -> int:
    """Return the maximum number of spans (start, end) that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = running = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def study_overhead(study_dir: pathlib.Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Split a finished study's trial-slot time into trial work and overhead, from its MLflow records.

    Capacity is the study's wall time times its trial slots. Trial work is
    what the trainer timed inside each trial (data, model initialisation,
    compilation, training and evaluation). The rest is overhead: starting
    the study (Ray, audio cache), each trial's start-up and tracking outside
    its timed work, the gaps between trials and the idle slots at the end.

    NOTE: seed-packed trials log neither `time/init_seconds` nor the
    `compile/*` counts, so for them initialisation counts as overhead and
    the compilation check is left out.
    """
    from mlflow.tracking import MlflowClient

    from analysis import load
    from pipeline import tracking

    runs = load.load_study(study_dir, tracking_uri)
    client = MlflowClient(runs.tracking_uri)
    parent = client.get_run(runs.parent_run_id)
    children = [client.get_run(run_id) for run_id in runs.finished["run_id"].to_list()]
    if not children:
        raise config_lib.ConfigError(f"study {study_dir} has no finished trials to measure; run it with `ablate run` first.")
    spans = [(run.info.start_time / 1000, run.info.end_time / 1000) for run in children]
    slots = int(parent.data.metrics.get("study/slots", 0)) or _peak_concurrency(spans)
    wall = parent.data.metrics.get("study/wall_seconds") or (parent.info.end_time - parent.info.start_time) / 1000
    work = {key: sum(run.data.metrics.get(key, 0.0) for run in children) for key in TRIAL_WORK}
    trial_seconds = sum(end - start for start, end in spans)
    capacity = wall * slots
    busy = sum(work.values())
    compiles = [run.data.metrics.get("compile/slow_compiles") for run in children]
    cells = {run.data.tags.get(tracking.CELL, "") for run in children}
    result = {
        "study": str(study_dir),
        "trials": len(children),
        "cells": len(cells),
        "slots": slots,
        "wall_seconds": wall,
        "capacity_seconds": capacity,
        **{f"sum_{key.removeprefix('time/')}": value for key, value in work.items()},
        "trial_run_seconds": trial_seconds,
        "start_seconds": min(start for start, _ in spans) - parent.info.start_time / 1000,
        "overhead_share": 1.0 - busy / capacity,
        "overhead_share_counting_compile": 1.0 - (busy - work["time/compile_seconds"]) / capacity,
        "inside_trials_share": (trial_seconds - busy) / capacity,
        "between_trials_share": (capacity - trial_seconds) / capacity,
        "eval_share_of_training": work["time/eval_seconds"] / max(work["time/train_seconds"], 1e-9),
        "max_eval_share_of_training": max(
            run.data.metrics.get("time/eval_seconds", 0.0) / max(run.data.metrics.get("time/train_seconds", 0.0), 1e-9)
            for run in children
        ),
    }
    if all(count is not None for count in compiles):
        result["slow_compiles"] = int(sum(compiles))
        result["trials_that_compiled"] = sum(1 for count in compiles if count > 0)
    return result


def bench_study(options: BenchOptions) -> dict[str, Any]:
    """Run a study (by default a small built-in one) and split its wall time into trial work and overhead."""
    from pipeline import runner
    from pipeline import study as study_lib

    folder = options.output / "study"
    folder.mkdir(parents=True, exist_ok=True)
    study_file = options.study_file
    if study_file is None:
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
    return study_overhead(result.study_dir, result.tracking_uri)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return each speed target with its measured value and whether it is met."""
    rows = []
    tiny = next((row for row in results.get("presets", []) if row["preset"] == "tiny"), None)
    if tiny and "input" in results:
        ratio = results["input"]["examples_per_second"] / tiny["examples_per_second"]
        rows.append(
            {
                "target": "input pipeline delivers at least 5x what the tiny preset consumes",
                "measured": f"{ratio:.1f}x ({results['input']['examples_per_second']:.0f} against "
                f"{tiny['examples_per_second']:.1f} examples/s)",
                "met": ratio >= 5.0,
            }
        )
    study = results.get("study")
    if study:
        rows.append(
            {
                "target": "orchestration and tracking take at most 10% of the study's trial slots",
                "measured": f"{study['overhead_share']:.1%} of {study['wall_seconds']:.0f} s x {study['slots']} slots",
                "met": study["overhead_share"] <= 0.10,
            }
        )
        if "trials_that_compiled" in study:
            rows.append(
                {
                    "target": "each program shape compiled once per study, not once per trial",
                    "measured": f"{study['trials_that_compiled']} of {study['trials']} trials compiled "
                    f"({study['slow_compiles']} programs) for {study['cells']} cells",
                    "met": study["trials_that_compiled"] <= study["cells"],
                }
            )
        rows.append(
            {
                "target": "evaluation costs under 20% of a trial's training time",
                "measured": f"mean {study['eval_share_of_training']:.1%}, worst trial {study['max_eval_share_of_training']:.1%}",
                "met": study["max_eval_share_of_training"] < 0.20,
            }
        )
    if "packing" in results:
        ratio = results["packing"]["ratio"]
        rows.append(
            {
                "target": "seed packing gives more throughput than separate trials",
                "measured": f"ratio {ratio:.2f} with {results['packing']['seeds']} seeds",
                "met": ratio > 1.0,
            }
        )
    return rows


def _markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Benchmark",
        "",
        f"Command: `{results['command']}`",
        f"Date: {results['date']}",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, load average {machine.get('load_average', '?')} at the start, "
        f"jax {machine['jax']}, devices {', '.join(machine['devices'])}",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |" for row in targets(results)]
    lines += [
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
        lines += ["", f"Input pipeline alone: {results['input']['examples_per_second']:.0f} examples/s."]
    if "evaluation" in results:
        lines += ["", f"Evaluation of one tiny-preset model ({', '.join(results['evaluation']['tasks'])}): {results['evaluation']['seconds']:.1f} s."]
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
            f"## Study {study['study']}",
            "",
            f"{study['trials']} trials of {study['cells']} cells, {study['slots']} at a time, in {study['wall_seconds']:.0f} s "
            f"({study['capacity_seconds']:.0f} slot-seconds).",
            "",
            "| part | seconds | share of slot time |",
            "|---|---|---|",
        ]
        for key in ("data", "init", "compile", "train", "eval"):
            value = study.get(f"sum_{key}_seconds", 0.0)
            lines.append(f"| trial {key} | {value:.0f} | {value / study['capacity_seconds']:.1%} |")
        inside = study["inside_trials_share"] * study["capacity_seconds"]
        between = study["between_trials_share"] * study["capacity_seconds"]
        lines += [
            f"| inside trial runs, outside timed work (model set-up, tracking, artifacts) | {inside:.0f} | {study['inside_trials_share']:.1%} |",
            f"| between trial runs (study start {study['start_seconds']:.0f} s, trial start-up, idle slots at the end) | {between:.0f} | "
            f"{study['between_trials_share']:.1%} |",
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
    if options.study_dir is not None:
        results["study"] = study_overhead(options.study_dir)
    elif options.run_study:
        results["study"] = bench_study(options)
    for row in targets(results):
        print(f"{'met' if row['met'] else 'NOT MET'}: {row['target']}: {row['measured']}", flush=True)
    (options.output / "benchmark.json").write_text(json.dumps(results, indent=2))
    (options.output / "benchmark.md").write_text(_markdown(results))
    return results
