"""The `rlhf` command line.

    rlhf ppo [--config F] [key=value ...]            PPO on the built-in default, or your model and data
    rlhf sft [--config F] [key=value ...]            supervised fine-tuning on demonstrations (the step before RLHF)
    rlhf dpo [--config F] [key=value ...]            DPO / IPO / cDPO on one policy role (local, or Ray replicas)
    rlhf rm [--config F] [key=value ...]             train a reward model (bradley_terry, mean_variance, categorical, mixture, odin)
    rlhf rm eval --path DIR [key=value ...]          evaluate a saved reward model: JSON report and plots
    rlhf config <job> [--config F] [key=value ...]   print the resolved config as YAML
    rlhf bench ppo|dpo|rm|sft [--model M]          per-phase time, samples/s, tokens/s, MFU, peak memory per role
    rlhf cost [--model llama2-7b] [--published]     cost model: memory per GPU per role, FLOPs, comm, step time
    rlhf data check FILE --kind prompt|preference    validate a dataset, print counts and lengths
    rlhf data audit DATA [--out DIR]                disagreement, label errors, length bias, duplicates of preference data
    rlhf experiment NAME [--help] [options]          the experiments of orchestrator/experiments (each takes its own
                                                     options: `rlhf experiment NAME --help`)
    rlhf serve reward --path DIR [--port 8000]      a reward as a Ray Serve HTTP endpoint (PPO: reward.kind=remote)

Errors in user input (config keys and values, data rows) end the run with one line on stderr that
names the key, file, row or field, and exit code 2. A training job that fails after it started (a role
that raised, a reward that returned garbage, a non-finite number) ends with one line naming the role and
the root cause, the full traceback written to `<output_dir>/error.log` (the line gives the path), and
exit code 1. SIGTERM (preemption, `ray job stop`) or SIGINT (Ctrl-C) during a training job: the
current step finishes, a checkpoint is written, the roles stop, and the exit code is 143 (SIGTERM) or
130 (SIGINT); `run.resume=auto` continues. A second signal, or `run.stop_timeout_s` passing, abandons
the step (exit 130, the previous checkpoint kept).
"""

from __future__ import annotations

import argparse
import logging
import sys

from orchestrator.config import ConfigError, to_yaml
from orchestrator.data import DataError
from orchestrator.experiments import EXPERIMENTS
from orchestrator.registry import JOBS, load_config, run
from orchestrator.tools import audit, bench, costmodel, data_check, serve

EXIT_USAGE = 2
EXIT_FAILED = 1
ERROR_LOG = "error.log"


class RunFailed(RuntimeError):
    """A job failed after it started; the message is one line and names where the traceback went."""


def _one_line(exc: BaseException) -> str:
    """The root cause in one line: a role error's first line (role, replica, method, exception), else the
    exception's type and first line."""
    from actors.config import first_line
    from cluster import RoleError

    return first_line(exc) if isinstance(exc, RoleError) else f"{type(exc).__name__}: {first_line(exc)}"


def _failed(exc: BaseException, output_dir: str) -> RunFailed:
    """Write the traceback of `exc` to output_dir/error.log (appending) and return the one-line RunFailed."""
    import os
    import time
    import traceback

    path = os.path.join(output_dir, ERROR_LOG)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        where = f"full traceback in {path}"
    except OSError as e:
        where = f"the traceback could not be written to {path}: {e}"
    return RunFailed(f"{_one_line(exc)} ({where})")


USER_ERRORS = (ConfigError, DataError)
"""Errors that mean bad user input (printed as one line), as opposed to bugs (tracebacks)."""


def run_job(name: str, cfg, dry_run: bool = False) -> int:
    """Run job `name` (`orchestrator.registry.run`) as a command: a failure after it started is one line
    (`RunFailed`, the traceback in <output_dir>/error.log); a preemption returns its exit code."""
    from orchestrator.core.job import Preempted  # torch: imported when a job runs, not for `rlhf --help`

    try:
        run(name, cfg, dry_run=dry_run)
    except Preempted as e:
        print(f"rlhf: {e}", file=sys.stderr)
        return e.exit_code
    except (*USER_ERRORS, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001  (after start: one line, the traceback to a file)
        raise _failed(e, cfg.run.output_dir) from e
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.job, args.config, args.overrides), comments=not args.no_comments))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.job, args.config, args.overrides)  # every key checked before anything starts
    return run_job(args.job, cfg, dry_run=args.dry_run)


def _cmd_rm(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if overrides[:1] == ["eval"]:
        overrides = overrides[1:] + ([f"path={args.path}"] if args.path else [])
        run("rm_eval", load_config("rm_eval", args.config, overrides))
        return 0
    if args.path:
        raise ConfigError("--path is an option of `rlhf rm eval`; the backbone to train is model.path=...")
    return run_job("rm", load_config("rm", args.config, overrides), dry_run=args.dry_run)


def _cmd_tool(module):
    """The command of a tool module (`add_args(parser)`, `run(args) -> exit code`)."""
    return lambda args: module.run(args)


def _cmd_experiment(args: argparse.Namespace) -> int:
    return EXPERIMENTS[args.name].load().main(args.options, prog=f"rlhf experiment {args.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="Distributed RLHF on Ray: PPO with DeepSpeed ZeRO roles, DPO, and distributional reward models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("config", help="print a job's resolved config as YAML (defaults <- --config file <- overrides)")
    p.add_argument("job", choices=sorted(JOBS), help="job whose config to print")
    p.add_argument("--config", help="YAML file with config values")
    p.add_argument("--no-comments", action="store_true", help="omit the field docs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. policy.lr=1e-6")
    p.set_defaults(func=_cmd_config)

    for name, entry in JOBS.items():
        if entry.job is None or name == "rm":
            continue
        p = sub.add_parser(name, help=entry.help)
        p.add_argument("--config", help=f"YAML file with config values (see `rlhf config {name}`)")
        p.add_argument("--dry-run", action="store_true", help="check config, data and models, print the placement plan, start nothing")
        p.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {entry.example}")
        p.set_defaults(func=_cmd_train, job=name)

    p = sub.add_parser("rm", help=f"{JOBS['rm'].help} (`rlhf rm eval --path DIR`: {JOBS['rm_eval'].help})",
                       description="rlhf rm [key=value ...] trains (see `rlhf config rm`); "
                                   "rlhf rm eval --path DIR [key=value ...] evaluates a saved model (see `rlhf config rm_eval`).")
    p.add_argument("--config", help="YAML file with config values (see `rlhf config rm` / `rlhf config rm_eval`)")
    p.add_argument("--path", help="rm eval: the saved reward model folder (same as path=DIR)")
    p.add_argument("--dry-run", action="store_true", help="training: check config, data and models, print the placement plan, start nothing")
    p.add_argument("overrides", nargs="*", metavar="[eval] key=value",
                   help=f"'eval' first to evaluate; dotted overrides, e.g. {JOBS['rm'].example}")
    p.set_defaults(func=_cmd_rm)

    groups = {"data": ("dataset tools", "ACTION"), "serve": ("serve a model over HTTP", "WHAT")}
    made: dict = {}
    for path, module in (("bench", bench), ("cost", costmodel), ("data check", data_check), ("data audit", audit),
                         ("serve reward", serve)):
        parent = sub
        if " " in path:  # a tool under a group: rlhf data check, rlhf data audit, rlhf serve reward
            group, path = path.split()
            if group not in made:
                text, metavar = groups[group]
                made[group] = sub.add_parser(group, help=text).add_subparsers(dest=f"{group}_command", metavar=metavar, required=True)
            parent = made[group]
        p = parent.add_parser(path, help=module.HELP, description=module.DESCRIPTION)
        module.add_args(p)
        p.set_defaults(func=_cmd_tool(module))

    p = sub.add_parser("experiment", help="reproducible experiments that print their findings",
                       description="rlhf experiment NAME [options]; each experiment's options: rlhf experiment NAME --help",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="experiments:\n" + "\n".join(f"  {n:<20}{e.help}" for n, e in EXPERIMENTS.items()))
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help="one of: " + ", ".join(EXPERIMENTS))
    p.add_argument("options", nargs=argparse.REMAINDER, help="the experiment's own options (parsed by the experiment)")
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options (`rlhf bench ppo --steps 2 run.mode=local`): argparse stops
    # filling a positional list at the first option, so collect the stragglers here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
