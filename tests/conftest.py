"""Shared fixtures: the shipped InsectSet32 copy and small configs for fast runs."""

from __future__ import annotations

import os
import pathlib
import tempfile

# Tests run on one CPU thread each and never look for accelerators.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests that build the same program in several places compile it once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ablate-tests-jax-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from pipeline import config as config_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
INSECTSET32 = REPO.parent / "shared" / "data" / "insectset32"


@pytest.fixture(scope="session")
def insect_root() -> pathlib.Path:
    if not INSECTSET32.is_dir():
        pytest.fail(f"InsectSet32 not found at {INSECTSET32}; the tests read the shipped copy beside the repository.")
    return INSECTSET32


@pytest.fixture(scope="session")
def audio_cache(tmp_path_factory) -> pathlib.Path:
    """One decoded-audio cache for the whole test session."""
    return tmp_path_factory.mktemp("audio-cache")


def small_config(**overrides) -> config_lib.Config:
    """Return a config that trains in seconds: tiny backbone, a few steps, small batches."""
    values = {
        "data": {"root": str(INSECTSET32)},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "warmup_steps": 1},
        "eval": {"max_windows_per_recording": 1, "batch_size": 16, "tasks": ["test"]},
    }
    values = config_lib.merge(values, config_lib.nest(overrides)) if overrides else values
    return config_lib.from_dict(values)
