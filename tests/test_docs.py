"""The README is a front door and docs/ the manual: the README stays short and starts with the two set-up
commands; every docs page is linked; every relative link resolves; and every `rlhf` command shown in a
```bash block is one the CLI accepts (the real argument parser, and the real config loader for its
key=value overrides), so a renamed flag or config key cannot survive in the docs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def code_blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def shown_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in code_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def rlhf_argv(command: str) -> list[str] | None:
    """The arguments of an `rlhf` command in a shown line (also after `ray job submit ... --`), else None."""
    if " -- " in command:
        command = command.split(" -- ", 1)[1]
    for prefix in ("rlhf ", "python -m orchestrator.cli "):
        if command.startswith(prefix):
            return shlex.split(command[len(prefix):])
    return None


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    first = code_blocks(text)[0].splitlines()
    assert [line.split("#")[0].split() for line in first] == [["make", "demo"], ["make", "test"]]


def test_every_docs_page_is_linked_from_the_readme_and_the_index():
    for page in (README, ROOT / "docs" / "index.md"):
        linked = {(page.parent / (a or b).split("#")[0]).resolve() for a, b in LINK.findall(page.read_text())}
        missing = [d.name for d in DOCS if d.resolve() not in linked and d.resolve() != page.resolve()]
        assert not missing, f"{page.name} does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    bad = []
    for a, b in LINK.findall(page.read_text()):
        target = (a or b).split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        if not (page.parent / target).exists():
            bad.append(target)
    assert not bad, f"{page.name}: links to nothing: {bad}"


def _check(argv: list[str]) -> None:
    """Parse `rlhf <argv>` as the CLI does; load the config a job or tool would with the overrides shown."""
    from orchestrator.cli import build_parser
    from orchestrator.config import load
    from orchestrator.experiments import EXPERIMENTS
    from orchestrator.registry import JOBS, load_config

    args, extra = build_parser().parse_known_args(argv)
    overrides = list(getattr(args, "overrides", [])) + [e for e in extra if "=" in e and not e.startswith("-")]
    if [e for e in extra if e not in overrides]:  # the CLI's parser.error: exit 2
        raise SystemExit(2)
    if args.command == "experiment":
        module = EXPERIMENTS[args.name].load()
        parsed = module.parser().parse_args(args.options)
        if args.name == "scaling":
            spec = module.load_grid(None, parsed.axes, parsed.quick)
            module.check_overrides({**spec, "job": parsed.job or spec["job"]})
        return
    if args.command == "rm" and overrides[:1] == ["eval"]:
        load_config("rm_eval", None, overrides[1:])
    elif args.command in JOBS or args.command == "config":
        load_config(args.job if args.command == "config" else args.command, None, overrides)
    elif args.command == "bench":
        from orchestrator.tools.bench import config_job

        load_config(config_job(args.job), None, overrides)
    elif args.command == "serve":
        from orchestrator.tools.serve import _Served

        load(_Served, None, overrides, check=False)


COMMANDS = [(page.name, c) for page in PAGES for c in shown_commands(page.read_text()) if rlhf_argv(c) is not None]


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_every_shown_rlhf_command_is_accepted(page, command):
    try:
        _check(rlhf_argv(command))
    except SystemExit as e:  # argparse's refusal
        pytest.fail(f"{page}: `{command}`: the CLI refuses it (exit {e.code})")


def test_every_shown_make_target_exists():
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = {c.split()[1] for page in PAGES for c in shown_commands(page.read_text()) if c.startswith("make ")}
    assert shown and shown <= targets, shown - targets


def test_the_check_refuses_a_renamed_key_and_flag():
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="policy.lrr"):
        _check(["ppo", "policy.lrr=1e-6"])
    with pytest.raises(SystemExit):
        _check(["bench", "ppo", "--no-such-flag"])
    with pytest.raises(SystemExit):
        _check(["experiment", "estimators", "--grid", "g.yaml"])  # a scaling option
    _check(["experiment", "scaling", "--quick", "ppo.minibatch_size=8,16"])
