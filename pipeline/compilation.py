"""Counts of XLA compilations in this process, read from `jax.monitoring`.

A study compiles each program shape once when its trials share JAX's
persistent compilation cache: the first trial of a shape compiles, and the
others load the compiled program from the cache in a fraction of the time. These
counts let a trial log how many programs it compiled and how many it
loaded, so the benchmark can check that claim from a study's records.
"""

from __future__ import annotations

import dataclasses
import threading

# A compilation that takes at least this long is stored in the persistent
# cache (the runner sets `jax_persistent_cache_min_compile_time_secs` to it),
# so a second one of the same program means the cache was not shared.
SLOW_SECONDS = 1.0

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class Counts:
    """Programs built by XLA, loaded from the persistent cache, and their seconds."""

    programs: int = 0
    cache_hits: int = 0
    slow_compiles: int = 0
    seconds: float = 0.0

    def __sub__(self, other: "Counts") -> "Counts":
        return Counts(
            self.programs - other.programs,
            self.cache_hits - other.cache_hits,
            self.slow_compiles - other.slow_compiles,
            self.seconds - other.seconds,
        )

    def as_metrics(self) -> dict[str, float]:
        return {
            "compile/programs": float(self.programs),
            "compile/cache_hits": float(self.cache_hits),
            "compile/slow_compiles": float(self.slow_compiles),
            "compile/seconds": self.seconds,
        }


_counts = Counts()
_lock = threading.Lock()
_installed = False


def _on_duration(event: str, seconds: float, **_: object) -> None:
    if event != _COMPILE_EVENT:
        return
    with _lock:
        _counts.programs += 1
        _counts.seconds += seconds
        if seconds >= SLOW_SECONDS:
            _counts.slow_compiles += 1


def _on_event(event: str, **_: object) -> None:
    if event == _CACHE_HIT_EVENT:
        with _lock:
            _counts.cache_hits += 1


def install() -> None:
    """Start counting; calling it again does nothing."""
    global _installed
    import jax.monitoring

    with _lock:
        if _installed:
            return
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _installed = True


def snapshot() -> Counts:
    """Return the counts so far; subtract two snapshots for an interval."""
    install()
    with _lock:
        return dataclasses.replace(_counts)
