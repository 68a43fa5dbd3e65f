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
    rlhf experiment dpl-synthetic                    reproduce the DPL paper's 1-D experiment
    rlhf experiment hidden-context [--seeds N]       DPL std, ODIN and risk-averse PPO on the built-in data
    rlhf experiment relevance-hacking [--quick]      PPO with bare relevance, relevance x length, and R^3
    rlhf experiment length-bias [--quick]            PPO with Bradley-Terry, ODIN, a length penalty, reward clipping
    rlhf experiment scaling [--quick] [key=v1,v2 ...] a sweep of real runs: step/phase times, memory, comm; plots
    rlhf experiment estimators [--quick]             GAE vs GRPO, Dr. GRPO, RLOO, REINFORCE++ on the built-in task
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

from orchestrator.configtree import ConfigError

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


def _cmd_config(args: argparse.Namespace) -> int:
    from orchestrator.config import load_job_config, to_yaml

    cfg = load_job_config(args.job, args.config, args.overrides)
    print(to_yaml(cfg, comments=not args.no_comments))
    return 0


def _cmd_train(job: str):
    """The command of a training job: its config checked before anything starts, then its `train`."""

    def cmd(args: argparse.Namespace) -> int:
        import importlib

        from orchestrator.config import load_job_config

        cfg = load_job_config(job, args.config, args.overrides)  # every key checked before anything starts
        from orchestrator.job import Preempted

        try:
            importlib.import_module(f"orchestrator.{job}").train(cfg, dry_run=args.dry_run)
        except Preempted as e:
            print(f"rlhf: {e}", file=sys.stderr)
            return e.exit_code
        except (ConfigError, _user_errors(), KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001  (after start: one line, the traceback to a file)
            raise _failed(e, cfg.run.output_dir) from e
        return 0

    return cmd


def _cmd_rm(args: argparse.Namespace) -> int:
    from orchestrator.config import load_job_config

    overrides = list(args.overrides)
    if overrides[:1] == ["eval"]:
        overrides = overrides[1:] + ([f"path={args.path}"] if args.path else [])
        cfg = load_job_config("rm_eval", args.config, overrides)
        from orchestrator.rm_eval import eval_saved_model

        eval_saved_model(cfg)
        return 0
    if args.path:
        raise ConfigError("--path is an option of `rlhf rm eval`; the backbone to train is model.path=...")
    return _cmd_train("rm")(argparse.Namespace(config=args.config, overrides=overrides, dry_run=args.dry_run))


def _cmd_bench(args: argparse.Namespace) -> int:
    from orchestrator.bench import run

    return run(args)


def _cmd_cost(args: argparse.Namespace) -> int:
    from orchestrator.costmodel import run

    return run(args)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from orchestrator.data import run_data_check

    return run_data_check(args)


SEEDED_EXPERIMENTS = {"dpl-synthetic": "dpl_synthetic", "hidden-context": "hidden_context", "relevance-hacking": "relevance_hacking", "length-bias": "length_bias",
                      "estimators": "estimators"}
"""`rlhf experiment NAME` -> its module in orchestrator/experiments: those that run over seeds (--seeds)."""


def _cmd_experiment(args: argparse.Namespace) -> int:
    import importlib

    scaling_only = [f"--{k.replace('_', '-')}" for k in ("grid", "job", "warmup", "steps") if getattr(args, k) is not None]
    scaling_only += ["--predict"] * args.predict + list(args.overrides)
    if args.name != "scaling" and scaling_only:
        raise ConfigError(f"rlhf experiment {args.name} does not take {' '.join(scaling_only)} (options of `rlhf experiment scaling`)")
    if args.name not in SEEDED_EXPERIMENTS and args.seeds is not None:
        raise ConfigError(f"rlhf experiment {args.name} does not take --seeds (a sweep of measured points)")
    if args.name != "estimators" and args.variants is not None:
        raise ConfigError(f"rlhf experiment {args.name} does not take --variants (an option of `rlhf experiment estimators`)")
    if args.name in SEEDED_EXPERIMENTS:
        module = importlib.import_module(f"orchestrator.experiments.{SEEDED_EXPERIMENTS[args.name]}")
        argv = ["--out", args.out or f"runs/{args.name}", "--seed", str(args.seed)]
        argv += ["--seeds", str(args.seeds)] if args.seeds is not None else []
        argv += ["--variants", args.variants] if args.variants is not None else []
        return module.main(argv + (["--quick"] if args.quick else []))
    if args.name == "scaling":
        from orchestrator.experiments import scaling

        argv = ["--out", args.out or "runs/scaling", "--point-timeout", str(args.point_timeout)]
        for flag in ("grid", "job", "warmup", "steps"):
            if getattr(args, flag) is not None:
                argv += [f"--{flag}", str(getattr(args, flag))]
        argv += ["--quick"] * args.quick + ["--predict"] * args.predict
        return scaling.main(argv + list(args.overrides))
    raise AssertionError(args.name)


def _cmd_serve_reward(args: argparse.Namespace) -> int:
    from orchestrator.serve import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.config import JOBS

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

    for job, text, example in (
        ("ppo", "PPO: policy, reference, critic and reward as Ray actor groups (or local objects)", "policy.lr=1e-6 run.mode=local"),
        ("sft", "SFT: supervised fine-tuning on prompt/response demonstrations (local, or Ray replicas with ZeRO)",
         "data.path=demos.jsonl policy.path=./my_model"),
        ("dpo", "DPO / IPO / cDPO: one policy role (local, or Ray replicas with DeepSpeed ZeRO)", "dpo.loss=ipo policy.replicas=2 run.mode=ray"),
    ):
        p = sub.add_parser(job, help=text)
        p.add_argument("--config", help=f"YAML file with config values (see `rlhf config {job}`)")
        p.add_argument("--dry-run", action="store_true", help="check config, data and models, print the placement plan, start nothing")
        p.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")
        p.set_defaults(func=_cmd_train(job))

    p = sub.add_parser("rm", help="train a reward model (`rlhf rm eval --path DIR`: evaluate a saved one)",
                       description="rlhf rm [key=value ...] trains (see `rlhf config rm`); "
                                   "rlhf rm eval --path DIR [key=value ...] evaluates a saved model (see `rlhf config rm_eval`).")
    p.add_argument("--config", help="YAML file with config values (see `rlhf config rm` / `rlhf config rm_eval`)")
    p.add_argument("--path", help="rm eval: the saved reward model folder (same as path=DIR)")
    p.add_argument("--dry-run", action="store_true", help="training: check config, data and models, print the placement plan, start nothing")
    p.add_argument("overrides", nargs="*", metavar="[eval] key=value",
                   help="'eval' first to evaluate; dotted overrides, e.g. model.objective=mean_variance run.mode=local")
    p.set_defaults(func=_cmd_rm)

    p = sub.add_parser("bench", help="benchmarks on any model: per-phase time, samples/s, tokens/s, MFU, peak memory per role")
    from orchestrator.bench import add_args as add_bench_args

    add_bench_args(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("cost", help="the cost model: memory per GPU per role, FLOPs, communication and step time (predictions)")
    from orchestrator.costmodel import add_args as add_cost_args

    add_cost_args(p)
    p.set_defaults(func=_cmd_cost)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("check", help="validate a dataset and print counts and token-length statistics")
    from orchestrator.data import add_data_check_args

    add_data_check_args(p)
    p.set_defaults(func=_cmd_data_check)

    p = sub.add_parser("experiment", help="reproducible experiments that print their findings")
    p.add_argument("name", choices=["dpl-synthetic", "hidden-context", "relevance-hacking", "length-bias", "scaling", "estimators"],
                   help="dpl-synthetic: the DPL paper's 1-D hidden-context experiment; hidden-context: DPL std, ODIN "
                        "and risk-averse PPO on the built-in preference data; relevance-hacking: PPO with bare relevance, "
                        "relevance x length and R^3; length-bias: PPO with Bradley-Terry, ODIN's quality head, a length "
                        "penalty and reward clipping; scaling: a sweep of real runs over a grid of config values "
                        "(orchestrator/experiments/scaling.py); estimators: PPO with GAE against the critic-free estimators "
                        "(orchestrator/experiments/estimators.py)")
    p.add_argument("--out", help="output folder (default runs/<name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer training steps (scaling: a 6-point grid, ~3 min here)")
    g = p.add_argument_group("scaling")
    g.add_argument("--grid", help="YAML grid: job, warmup, steps, fixed: {key: value}, grid: {key: [values]}")
    g.add_argument("--job", choices=["ppo", "dpo", "rm", "sft"], help="the job to sweep (default ppo)")
    g.add_argument("--warmup", type=int, help="unmeasured steps per point (default 1)")
    g.add_argument("--steps", type=int, help="measured steps per point (default 3)")
    g.add_argument("--predict", action="store_true", help="the cost model's prediction per point, calibrated on the others")
    g.add_argument("--point-timeout", type=float, default=1800.0, help="seconds before a point is stopped and recorded as failed")
    p.add_argument("--seeds", type=int, help="every experiment but scaling: seeds, from --seed (default 3; --quick 1, "
                                               "dpl-synthetic 3)")
    g = p.add_argument_group("estimators")
    g.add_argument("--variants", help="comma-separated subset: gae, grpo, dr_grpo, grpo_kl_loss, rloo, reinforce_pp")
    p.add_argument("overrides", nargs="*", metavar="key=v1,v2", help="scaling: grid axes (several values) and fixed keys (one)")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("serve", help="serve a model over HTTP")
    serve_sub = p.add_subparsers(dest="serve_command", metavar="WHAT", required=True)
    p = serve_sub.add_parser("reward", help="a reward (a saved reward model, or any reward.kind) as a Ray Serve JSON endpoint",
                             description="Deploys the reward on Ray Serve (bound to 127.0.0.1 by default), prints the URL "
                                         "and blocks until Ctrl-C. Wire format and detached use: orchestrator/serve.py.")
    from orchestrator.serve import add_args as add_serve_args

    add_serve_args(p)
    p.set_defaults(func=_cmd_serve_reward)
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
    except (ConfigError, _user_errors()) as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


def _user_errors() -> type:
    """Errors that mean bad user input (printed as one line), as opposed to bugs (tracebacks)."""
    try:
        from orchestrator.data import DataError

        return DataError
    except ImportError:  # pragma: no cover
        return ConfigError


if __name__ == "__main__":
    sys.exit(main())
