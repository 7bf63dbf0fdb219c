"""Ray Tune adapter: runs the trials of a study, locally or on a cluster.

The driver decodes the audio once, opens the MLflow parent run, skips the
trials whose child run already finished (matched by config hash), and hands
the rest to Ray Tune, one trial per `cpus_per_trial` CPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
import traceback
from typing import Any

from pipeline import compilation, progress, tracking
from pipeline import study as study_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StudyResult:
    """Counts and timing of one `run_study` call."""

    study_dir: pathlib.Path
    tracking_uri: str
    parent_run_id: str
    skipped: int
    finished: int
    failed: list[str]
    wall_seconds: float


def _xla_flags(threads: int) -> str:
    """Return XLA flags that keep a trial's CPU threads within its share."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if "intra_op" not in flag and "multi_thread_eigen" not in flag]
    if threads <= 1:
        flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    else:
        flags += [f"intra_op_parallelism_threads={threads}"]
    return " ".join(flags)


def _configure_worker(context: dict[str, Any]) -> None:
    """Set XLA threads to the CPUs Ray gave this trial and share compiled programs."""
    import ray

    resources = ray.get_runtime_context().get_assigned_resources()
    os.environ["XLA_FLAGS"] = _xla_flags(max(1, int(resources.get("CPU", 1.0))))
    gpus = resources.get("GPU", 0.0)
    if 0.0 < gpus < 1.0:
        # Trials that share a GPU each preallocate only their share of it.
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpus:.3f}"
    # The persistent compilation cache lets trials of the same program
    # shape reuse one compilation. It is configured through the environment
    # so that it applies however jax was first imported in this worker.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = context["compilation_cache"]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(compilation.SLOW_SECONDS)
    import jax

    jax.config.update("jax_compilation_cache_dir", context["compilation_cache"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", compilation.SLOW_SECONDS)


def run_trial(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial (or one packed cell), tracked in MLflow child runs."""
    from ray import tune

    context = params["context"]
    _configure_worker(context)
    from pipeline import config as config_lib
    from pipeline import train

    payloads = params["trial"]["packed"] if "packed" in params["trial"] else [params["trial"]]
    import ray

    runs = [
        tracking.TrialRun(context["tracking_uri"], context["experiment_id"], context["parent_run_id"], payload)
        for payload in payloads
    ]
    node = ray.get_runtime_context().get_node_id()
    for run in runs:
        run.client.set_tag(run.run_id, "ablate.node", node)

    def reporter(run: tracking.TrialRun, index: int):
        def report(metrics: dict[str, float], step: int | None) -> None:
            run.log_metrics(metrics, step)
            if index == 0:
                tune.report({**metrics, "step": step if step is not None else -1})

        return report

    configs = [config_lib.from_dict(payload["config"]) for payload in payloads]
    study_dir = pathlib.Path(context["study_dir"])
    workdirs = [study_dir / "trials" / payload["config_hash"] for payload in payloads]
    reports = [reporter(run, index) for index, run in enumerate(runs)]
    try:
        if len(configs) > 1:
            from pipeline import packing

            packing.train_and_evaluate_packed(
                configs, workdirs, reports, base_dir=context["base_dir"], cache_dir=context["audio_cache"]
            )
        else:
            checkpoint = None
            if context["checkpoint_every"] > 0:
                checkpoint = train.CheckpointOptions(
                    every_steps=context["checkpoint_every"],
                    keep=context["keep_checkpoints"],
                    budget_folder=study_dir / "trials",
                    budget_bytes=context["disk_budget_bytes"],
                )
            train.train_and_evaluate(
                configs[0], workdirs[0], reports[0], base_dir=context["base_dir"], cache_dir=context["audio_cache"], checkpoint=checkpoint
            )
    except train.NonFiniteLossError as error:
        # Divergence is deterministic for a seed, so it is recorded and not retried.
        for run in runs:
            run.log_metrics(error.metrics, error.step)
            run.fail(str(error), error.step)
        tune.report({"failed": 1.0, "step": error.step})
        return
    except BaseException as error:
        for run in runs:
            run.fail(f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
        raise
    for run, workdir in zip(runs, workdirs):
        run.log_artifacts(workdir)
        run.finish()


def _payloads(pending: list[study_lib.Trial], pack_seeds: bool) -> list[dict[str, Any]]:
    """Return one Tune config per trial, or per cell when seeds are packed."""
    if not pack_seeds:
        return [study_lib.trial_payload(trial) for trial in pending]
    cells: dict[str, list[dict[str, Any]]] = {}
    for trial in pending:
        cells.setdefault(trial.cell_id, []).append(study_lib.trial_payload(trial))
    return [{"packed": group, "trial_id": group[0]["cell_id"]} for group in cells.values()]


def prepare_audio(study: study_lib.Study, cache_dir: pathlib.Path) -> None:
    """Decode every dataset the study uses once, before trials start."""
    from pipeline import data

    seen = set()
    for trial in study.trials:
        key = (trial.config.data, trial.config.audio.sample_rate_hz)
        if key in seen:
            continue
        seen.add(key)
        dataset = data.prepare_dataset(trial.config, study.base_dir, cache_dir)
        print(dataset.report.summary())
        if dataset.failed:
            print(f"{len(dataset.failed)} recordings failed to decode and are skipped: {', '.join(dataset.failed)}")


def check_output_folder(folder: pathlib.Path) -> None:
    """Raise ConfigError unless `folder` can be created and written."""
    from pipeline.config import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write the study output folder {folder}: {error.strerror or error}. "
            "Pass --runs with a writable folder."
        ) from error


def check_tracking_uri(uri: str, timeout_seconds: float = 5.0) -> None:
    """Raise ConfigError if a tracking server fails its health check."""
    import urllib.error
    import urllib.request

    from pipeline.config import ConfigError

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_seconds) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"the MLflow tracking server at {uri} is unreachable ({reason}). Start one with "
            "`ablate tracking-server runs/<study>` or fix --tracking-uri / MLFLOW_TRACKING_URI."
        ) from error


def run_study(
    study: study_lib.Study,
    runs_root: pathlib.Path,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    max_concurrent: int | None = None,
) -> StudyResult:
    """Run every unfinished trial of `study` through Ray Tune."""
    import ray
    from ray import tune

    began = time.perf_counter()
    study_dir = (runs_root / study.name).resolve()
    check_output_folder(study_dir)
    uri = tracking_uri or tracking.default_uri(study_dir)
    check_tracking_uri(uri)
    audio_cache = runs_root.resolve() / "cache" / "audio"
    prepare_audio(study, audio_cache)

    # A tracking server stores artifacts in its own artifact store; a local
    # store keeps them in the study folder.
    artifact_root = None if uri.startswith(("http://", "https://")) else study_dir / "artifacts"
    experiment_id, parent_run_id = tracking.start_study(
        uri, study.name, study.factor_levels(), list(study.seeds), study.path, artifact_root, design=study.design, cells=study.cells
    )
    done = tracking.finished_hashes(uri, experiment_id, parent_run_id)
    pending = [trial for trial in study.trials if trial.config_hash not in done]
    # Seed-major order: the first trials to start are different cells, so
    # trials that run at once rarely compile the same program, and each
    # later seed of a cell loads its programs from the compilation cache.
    pending.sort(key=lambda trial: study.seeds.index(trial.seed))
    print(f"Study {study.name}: {len(study.trials)} trials, {len(study.trials) - len(pending)} already finished, {len(pending)} to run.")
    print(f"MLflow: {uri} (parent run {parent_run_id})")
    if not pending:
        tracking.end_study(uri, parent_run_id, failed=0)
        return StudyResult(study_dir, uri, parent_run_id, len(study.trials), 0, [], time.perf_counter() - began)

    context = {
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "study_dir": str(study_dir),
        "base_dir": str(study.base_dir),
        "audio_cache": str(audio_cache),
        "compilation_cache": str(runs_root.resolve() / "cache" / "jax"),
        "checkpoint_every": study.checkpoint_every,
        "keep_checkpoints": study.keep_checkpoints,
        "disk_budget_bytes": int(study.disk_budget_mb * 1e6),
    }
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # address="local" always starts a new instance, even where a
            # cluster from `ray start` runs on this machine.
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    concurrency = max_concurrent or study.max_concurrent_trials or 0
    slots = int(ray.cluster_resources().get("CPU", 1) // study.cpus_per_trial)
    slots = min(slots, concurrency) if concurrency else slots
    seeds_per_trial = len(study.seeds) if study.seed_packing else 1
    callback = progress.StudyProgress(
        len(study.trials) // seeds_per_trial, (len(study.trials) - len(pending)) // seeds_per_trial, max(1, slots)
    )
    resources = {"cpu": study.cpus_per_trial}
    if study.gpus_per_trial:
        resources["gpu"] = study.gpus_per_trial
    trainable = tune.with_resources(run_trial, resources)
    tuner = tune.Tuner(
        trainable,
        param_space={
            "trial": tune.grid_search(_payloads(pending, study.seed_packing)),
            "context": context,
        },
        # Reused actors skip a new worker process and the jax import for
        # every trial. Trials of a study ask for the same resources, so a
        # reused worker keeps the right thread count.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency or None, reuse_actors=True),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str(study_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=study.retries),
            callbacks=[callback],
            verbose=0,
        ),
    )
    results = tuner.fit()
    failed = []
    for result in results:
        trial_id = result.config["trial"]["trial_id"] if result.config else "?"
        if result.error is not None or (result.metrics or {}).get("failed"):
            failed.extend([payload["trial_id"] for payload in result.config["trial"]["packed"]] if "packed" in result.config["trial"] else [trial_id])
    wall_seconds = time.perf_counter() - began
    tracking.end_study(uri, parent_run_id, failed=len(failed), wall_seconds=wall_seconds, slots=slots)
    return StudyResult(
        study_dir, uri, parent_run_id, len(study.trials) - len(pending), len(pending) - len(failed), failed, wall_seconds
    )
