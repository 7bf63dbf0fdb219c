"""Progress of a study: trials done, running and failed, and the time left.

`StudyProgress` is a Ray Tune callback that prints one line whenever a trial
starts or ends. `status` computes the same figures from the MLflow store, for
a study that is running elsewhere or has finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from ray import tune


@dataclasses.dataclass
class Counts:
    """Trial counts of a study and an estimate of the time left."""

    total: int
    done: int
    running: int
    failed: int
    seconds_left: float | None

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.running - self.failed)

    def line(self) -> str:
        counts = (
            f"{self.done}/{self.total} trials done, {self.running} running, {self.failed} failed, "
            f"{self.pending} waiting"
        )
        if not self.running and not self.pending:
            return counts + "; nothing left to run"
        left = "unknown" if self.seconds_left is None else _duration(self.seconds_left)
        return f"{counts}; about {left} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def estimate_left(durations: list[float], remaining: int, running: int, slots: int) -> float | None:
    """Estimate the seconds until `remaining` trials finish, `slots` at a time."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    waves = (remaining + running) / max(1, slots)
    return mean * waves


class StudyProgress(tune.Callback):
    """Print a progress line each time a trial of the study starts or ends."""

    def __init__(self, total: int, already_done: int, slots: int):
        self.total = total
        self.done = already_done
        self.failed = 0
        self.slots = slots
        self.started: dict[str, float] = {}
        self.durations: list[float] = []

    def _print(self) -> None:
        running = len(self.started)
        remaining = self.total - self.done - self.failed - running
        counts = Counts(self.total, self.done, running, self.failed, estimate_left(self.durations, remaining, running, self.slots))
        print(f"[{time.strftime('%H:%M:%S')}] {counts.line()}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()
        self._print()

    def _ended(self, trial, failed: bool) -> None:
        began = self.started.pop(trial.trial_id, None)
        if began is not None and not failed:
            self.durations.append(time.monotonic() - began)
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, failed=bool((trial.last_result or {}).get("failed")))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, failed=True)


def status(study_dir, tracking_uri: str | None = None) -> tuple[Counts, list[str]]:
    """Return the counts of a study from its MLflow store, and its failed trials with reasons."""
    from analysis import load

    study = load.load_study(study_dir, tracking_uri)
    cells = study.design_cells if study.design_cells is not None else list(itertools.product(*study.factors.values()))
    total = len(cells) * max(1, len(study.seeds))
    runs = study.runs
    statuses = runs["status"].to_list() if runs.height else []
    done = statuses.count("FINISHED")
    running = statuses.count("RUNNING")
    failed_rows = runs.filter(runs["status"].is_in(["FAILED", "KILLED"])) if runs.height else runs
    durations = []
    if runs.height and "time/train_seconds" in runs.columns:
        finished = runs.filter(runs["status"] == "FINISHED")
        durations = [
            value for value in (finished["time/train_seconds"] + finished.get_column("time/eval_seconds", default=0)).to_list() if value
        ]
    remaining = max(0, total - done - running - len(failed_rows))
    seconds = estimate_left(durations, remaining, running, max(1, running)) if remaining + running else 0.0
    failures = [f"{row['trial']}: {row['failure'].splitlines()[0] if row['failure'] else row['status']}" for row in failed_rows.iter_rows(named=True)]
    return Counts(total, done, running, len(failures), seconds), failures
