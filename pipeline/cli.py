"""The `ablate` command: plan, run and analyze ablation studies."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from pipeline.config import ConfigError

DEFAULT_RUNS = pathlib.Path("runs")


def _plan(args: argparse.Namespace) -> int:
    from pipeline import study as study_lib

    study = study_lib.load_study(args.study)
    print(f"Study {study.name}: {study.description}".rstrip(": "))
    print(f"Baseline: {study.baseline or 'defaults'}; design: {study.design}; seeds: {list(study.seeds)}")
    for factor in study.factors:
        print(f"  factor {factor.name}: {', '.join(factor.levels)} (reference {factor.levels[0]})")
    print(f"{len(study.cells)} cells x {len(study.seeds)} seeds = {len(study.trials)} trials")
    for cell in study.cells:
        print("  " + (", ".join(f"{name}={level}" for name, level in cell.items()) or "baseline"))
    print(_cost_estimate(study))
    return 0


def _cost_estimate(study) -> str:
    """Estimate a study's CPU time and wall time on this machine from measured throughputs."""
    import math
    import os

    from pipeline.presets import CPU_EXAMPLES_PER_SECOND

    # Initialisation, compilation and evaluation, seconds per trial: 25 on
    # average in the default study, where later seeds load compiled programs.
    per_trial_overhead = 25.0
    seconds = []
    for trial in study.trials:
        train = trial.config.train
        rate = CPU_EXAMPLES_PER_SECOND.get(trial.config.model.backbone, 1.0) * study.cpus_per_trial
        seconds.append(train.steps * train.batch_size / rate + per_trial_overhead)
    slots = max(1, int((os.cpu_count() or 1) // study.cpus_per_trial))
    if study.max_concurrent_trials:
        slots = min(slots, study.max_concurrent_trials)
    wall = math.ceil(len(seconds) / slots) * (sum(seconds) / max(1, len(seconds)))
    return (
        f"Estimated cost: {sum(seconds) / 3600:.1f} CPU-hours; about {wall / 60:.0f} min on this machine "
        f"({slots} trials at a time). Estimate from measured CPU throughputs; see docs/benchmarks.md."
    )


def _run(args: argparse.Namespace) -> int:
    from pipeline import runner
    from pipeline import study as study_lib

    study = study_lib.load_study(args.study)
    result = runner.run_study(
        study, pathlib.Path(args.runs), address=args.address, tracking_uri=args.tracking_uri, max_concurrent=args.max_concurrent
    )
    print(
        f"Study {study.name}: {result.finished} trials finished, {result.skipped} were already done, "
        f"{len(result.failed)} failed, in {result.wall_seconds:.0f} s."
    )
    for trial in result.failed:
        print(f"  failed: {trial}")
    print(f"Results: {result.study_dir}. Analyze with: ablate analyze {result.study_dir}")
    return 1 if result.failed else 0


def _analyze(args: argparse.Namespace) -> int:
    from analysis import report

    study_dir = pathlib.Path(args.study_dir)
    if study_dir.suffix == ".toml":
        from pipeline import study as study_lib

        study_dir = pathlib.Path(args.runs) / study_lib.load_study(study_dir).name
    output = report.analyze(study_dir, args.tracking_uri)
    print(report.format_table(output.effects, report.TASK_METRICS))
    if output.failed:
        print(f"{len(output.failed)} trials did not finish: {', '.join(output.failed)}")
    if output.missing:
        print(f"{len(output.missing)} trials of the design have no finished run: {', '.join(output.missing)}")
    reports = [path for path in output.files if path.suffix in (".md", ".tex")]
    print(f"Wrote {len(output.files)} files to {output.folder}: " + ", ".join(path.name for path in reports))
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipeline import progress

    counts, failures = progress.status(args.study_dir, args.tracking_uri)
    print(f"{pathlib.Path(args.study_dir).name}: {counts.line()}")
    for failure in failures:
        print(f"  failed: {failure}")
    return 0


def _tracking_server(args: argparse.Namespace) -> int:
    import subprocess

    study_dir = pathlib.Path(args.study_dir).resolve()
    store = study_dir / "mlflow.db"
    if not store.exists():
        raise FileNotFoundError(f"no MLflow store at {store}; run the study first or check the folder.")
    command = [
        str(pathlib.Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--artifacts-destination",
        (study_dir / "artifacts").as_uri(),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    print(f"Serving {store} at http://{args.host}:{args.port}; use --tracking-uri http://{args.host}:{args.port}")
    return subprocess.call(command)


def _bench(args: argparse.Namespace) -> int:
    from pipeline import bench

    options = bench.BenchOptions(
        data_root=pathlib.Path(args.data_root).resolve(),
        output=pathlib.Path(args.output),
        presets=tuple(args.presets.split(",")),
        steps=args.steps,
        run_study=not args.no_study,
        study_file=pathlib.Path(args.study) if args.study else None,
        study_dir=pathlib.Path(args.study_dir) if args.study_dir else None,
    )
    if options.study_dir is not None and not (options.study_dir / "mlflow.db").exists():
        raise ConfigError(f"--study-dir {options.study_dir}: mlflow.db not found; pass a finished study's folder, such as runs/demo.")
    if options.study_file is not None and not options.study_file.is_file():
        raise ConfigError(f"--study {options.study_file}: study file not found; pass one such as ablations/demo.toml.")
    bench.run(options)
    print(f"Wrote {options.output / 'benchmark.json'} and {options.output / 'benchmark.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="print the cells and trial count of a study without running it")
    plan.add_argument("study", help="study file, such as ablations/demo.toml")
    plan.set_defaults(handler=_plan)

    run = commands.add_parser("run", help="run a study's unfinished trials through Ray Tune")
    run.add_argument("study", help="study file, such as ablations/demo.toml")
    run.add_argument("--runs", default=str(DEFAULT_RUNS), help="folder for all studies' outputs (default: runs)")
    run.add_argument("--address", default=None, help="address of a running Ray cluster to join, such as 127.0.0.1:6379")
    run.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or runs/<study>/mlflow.db)")
    run.add_argument("--max-concurrent", type=int, default=None, help="maximum number of trials that run at once")
    run.set_defaults(handler=_run)

    analyze = commands.add_parser("analyze", help="estimate each component's effect from a study's runs")
    analyze.add_argument("study_dir", help="the study's output folder, such as runs/demo, or its study file")
    analyze.add_argument("--runs", default=str(DEFAULT_RUNS), help="folder of all studies, used with a study file (default: runs)")
    analyze.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study folder's mlflow.db)")
    analyze.set_defaults(handler=_analyze)

    status = commands.add_parser("status", help="print trials done, running and failed of a study, and the time left")
    status.add_argument("study_dir", help="the study's output folder, such as runs/demo")
    status.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study folder's mlflow.db)")
    status.set_defaults(handler=_status)

    server = commands.add_parser("tracking-server", help="serve a study's MLflow store over HTTP for many trials or the UI")
    server.add_argument("study_dir", help="the study's output folder, such as runs/demo")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    server.add_argument("--workers", type=int, default=4, help="server worker processes (default: 4)")
    server.set_defaults(handler=_tracking_server)

    bench = commands.add_parser("bench", help="measure training, input, evaluation and study overhead on this machine")
    bench.add_argument("--data-root", default="../shared/data/insectset32", help="InsectSet32 folder (default: ../shared/data/insectset32)")
    bench.add_argument("--output", default="runs/bench", help="folder for benchmark.json and benchmark.md (default: runs/bench)")
    bench.add_argument("--presets", default="tiny,small,efficientnet_b0,perch2_full", help="comma-separated backbone presets")
    bench.add_argument("--steps", type=int, default=10, help="timed training steps per preset (default: 10)")
    bench.add_argument("--no-study", action="store_true", help="skip the study that measures orchestration overhead")
    bench.add_argument("--study", default=None, help="study file to run and measure instead of the built-in small study, such as ablations/demo.toml")
    bench.add_argument("--study-dir", default=None, help="measure this finished study's folder (such as runs/demo) instead of running one")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"ablate {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
