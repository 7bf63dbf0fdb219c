"""The benchmark's arithmetic: compile counts, overlap of trials, targets and its page."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pipeline import bench, compilation


def test_compilation_counts_a_new_program():
    before = compilation.snapshot()

    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones((7, 13))).block_until_ready()

    counted = compilation.snapshot() - before
    assert counted.programs >= 1
    assert counted.seconds > 0.0
    assert set(counted.as_metrics()) == {"compile/programs", "compile/cache_hits", "compile/slow_compiles", "compile/seconds"}


def test_peak_concurrency_of_trials():
    spans = [(0.0, 10.0), (1.0, 5.0), (6.0, 12.0), (11.0, 20.0)]

    assert bench._peak_concurrency(spans) == 2
    assert bench._peak_concurrency([(0.0, 1.0), (1.0, 2.0)]) == 1


def _results(overhead: float, eval_share: float) -> dict:
    return {
        "command": "ablate bench",
        "date": "2026-12-04",
        "machine": {"platform": "Linux", "cpus": 2, "jax": "0", "devices": ["cpu"], "load_average": "0.1"},
        "presets": [{"preset": "tiny", "batch_size": 16, "examples_per_second": 40.0, "step_seconds": 0.4, "compile_seconds": 20.0}],
        "input": {"examples_per_second": 1000.0},
        "packing": {"seeds": 3, "packed_examples_per_second": 60.0, "separate_examples_per_second": 40.0, "ratio": 1.5},
        "study": {
            "study": "runs/demo",
            "trials": 12,
            "cells": 4,
            "slots": 2,
            "wall_seconds": 600.0,
            "capacity_seconds": 1200.0,
            "sum_data_seconds": 1.0,
            "sum_compile_seconds": 100.0,
            "sum_train_seconds": 800.0,
            "sum_eval_seconds": 800.0 * eval_share,
            "start_seconds": 5.0,
            "overhead_share": overhead,
            "inside_trials_share": overhead / 2,
            "between_trials_share": overhead / 2,
            "eval_share_of_training": eval_share,
            "max_eval_share_of_training": eval_share,
            "slow_compiles": 8,
            "trials_that_compiled": 4,
        },
    }


def test_targets_report_met_and_missed():
    met = {row["target"]: row["met"] for row in bench.targets(_results(overhead=0.08, eval_share=0.15))}
    missed = {row["target"]: row["met"] for row in bench.targets(_results(overhead=0.25, eval_share=0.30))}

    assert len(met) == 5
    assert all(met.values())
    assert not missed["orchestration and tracking take at most 10% of the study's trial slots"]
    assert not missed["evaluation costs under 20% of a trial's training time"]
    assert missed["input pipeline delivers at least 5x what the tiny preset consumes"]


def test_markdown_names_command_and_targets():
    page = bench._markdown(_results(overhead=0.25, eval_share=0.1))

    assert "Command: `ablate bench`" in page
    assert "| orchestration and tracking take at most 10% of the study's trial slots | 25.0% of 600 s x 2 slots | NO |" in page
    assert "25.0x (1000 against 40.0 examples/s)" in page
    assert "| trial train | 800 | 66.7% |" in page
