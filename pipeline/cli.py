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
    return 0


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

    output = report.analyze(args.study_dir, args.tracking_uri)
    print(report.format_table(output.effects, ["eval/test/cmap", "eval/test/auroc", "eval/test/top1"]))
    if output.failed:
        print(f"{len(output.failed)} trials did not finish: {', '.join(output.failed)}")
    if output.missing:
        print(f"{len(output.missing)} trials of the design have no finished run: {', '.join(output.missing)}")
    print("Wrote " + ", ".join(str(path) for path in output.files))
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
    analyze.add_argument("study_dir", help="the study's output folder, such as runs/demo")
    analyze.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study folder's mlflow.db)")
    analyze.set_defaults(handler=_analyze)
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
