"""The layers of docs/architecture.md, checked on the source: imports go down only (orchestrator -> actors -> cluster
-> losses), lazy imports inside functions included; no module of ours imports itself back through
others (no cycle); and no layer reaches a higher one by an import string (a 'module:function' or module
name written as data, which a lower layer would import at run time). tests/test_losses_common.py checks
that losses/ imports nothing of ours."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("orchestrator", "actors", "cluster", "losses")
"""Top to bottom: a package may import those after it, never those before it."""
FORBIDDEN = {layer: set(LAYERS[: LAYERS.index(layer)]) for layer in LAYERS}
IMPORT_STRING = re.compile(r"^(orchestrator|actors|cluster|losses)(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")
"""A string that names one of our modules the way an import by name takes it ('pkg.mod' or 'pkg.mod:attr')."""


def sources(root: pathlib.Path = ROOT, packages=LAYERS) -> list[pathlib.Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py"))


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """Our modules imported anywhere in the file (module level or inside functions): `import a.b` is a.b;
    `from a import b` is a.b when that is a module of ours, else a; relative imports resolved."""
    here = module_name(path, _root_of(path))
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {_owner(m, known) for m in out if m.split(".")[0] in LAYERS and _owner(m, known)}


def _root_of(path: pathlib.Path) -> pathlib.Path:
    p = path.parent
    while (p / "__init__.py").exists():
        p = p.parent
    return p


def _owner(name: str, known: set[str]) -> str | None:
    """The module of ours `name` is, or is in (a.b.c -> a.b when a.b.c is an attribute)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: pathlib.Path = ROOT, packages=LAYERS) -> dict[str, set[str]]:
    files = sources(root, packages)
    known = {module_name(f, root) for f in files}
    return {module_name(f, root): imported_modules(f, known) - {module_name(f, root)} for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another in a circle (Tarjan's strongly connected components
    of more than one module), each as a list."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_strings(path: pathlib.Path) -> set[str]:
    """String constants of the file that name one of our modules as an import by name does."""
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORT_STRING.match(node.value)}


def string_crossings(root: pathlib.Path = ROOT) -> dict[str, list[str]]:
    """{file: import strings in it that name a higher layer}."""
    bad = {}
    for f in sources(root):
        layer = f.relative_to(root).parts[0]
        up = sorted(s for s in import_strings(f) if s.split(".")[0] in FORBIDDEN[layer])
        if up:
            bad[str(f.relative_to(root))] = up
    return bad


def config_strings(cfg, prefix: str = "") -> dict[str, str]:
    """{dotted key: value} of every string in a config tree (lists of sections included)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            key = f"{prefix}{f.name}" + (f".{i}" if isinstance(value, list) else "")
            if dataclasses.is_dataclass(item):
                out.update(config_strings(item, key + "."))
            elif isinstance(item, str):
                out[key] = item
    return out


# --------------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_imports_go_down_only(layer):
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.split(".")[0] in FORBIDDEN[layer])
           for m, targets in graph.items() if m.split(".")[0] == layer}
    assert any(m.split(".")[0] == layer for m in graph)
    assert not {m: t for m, t in bad.items() if t}, f"{layer}/ imports a higher layer: {bad}"


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, "modules that import one another in a circle (lazy imports included): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_no_layer_names_a_higher_one_in_an_import_string():
    assert not string_crossings(), f"import strings naming a higher layer: {string_crossings()}"


def test_no_config_default_names_one_of_our_modules():
    """A config default reaches a role as data: one that named an orchestrator module ('module:function')
    would make the role import it. Built-in rewards are `builtin:<name>`, resolved by the driver."""
    from orchestrator.registry import JOBS

    bad = {name: {k: v for k, v in config_strings(e.config()).items() if IMPORT_STRING.match(v)} for name, e in JOBS.items()}
    assert not any(bad.values()), bad


def test_a_role_refuses_to_import_the_orchestrator_by_name():
    from actors.reward import load_function

    for spec in ("orchestrator.builtin.world:annotator_reward", "builtin:annotator"):
        with pytest.raises(ValueError, match="the driver's to resolve"):
            load_function(spec)


# ------------------------------------------------------------------------------- the checks can fail


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_the_check_sees_a_lazy_cycle_through_three_modules(tmp_path):
    root = _tree(tmp_path, {
        "orchestrator/core/__init__.py": "",
        "orchestrator/core/job.py": "def run():\n    from orchestrator.builtin import policy\n",
        "orchestrator/builtin/__init__.py": "",
        "orchestrator/builtin/policy.py": "from orchestrator.jobs.sft import SFTJob\n",
        "orchestrator/jobs/__init__.py": "",
        "orchestrator/jobs/sft.py": "from orchestrator.core import job\n",
        "orchestrator/jobs/ppo.py": "from orchestrator.core.job import run\n",
    })
    assert cycles(import_graph(root)) == [["orchestrator.builtin.policy", "orchestrator.core.job", "orchestrator.jobs.sft"]]
    (root / "orchestrator/core/job.py").write_text("def run():\n    pass\n")
    assert cycles(import_graph(root)) == []


def test_the_check_sees_a_lazy_upward_import(tmp_path):
    root = _tree(tmp_path, {"actors/m.py": "def f():\n    from orchestrator.config import PPOConfig\n    import cluster.group\n"})
    assert import_graph(root)["actors.m"] == {"orchestrator", "cluster"}


def test_the_check_sees_an_import_string_naming_a_higher_layer(tmp_path):
    root = _tree(tmp_path, {
        "actors/reward.py": 'DEFAULT = "orchestrator.builtin.world:annotator_reward"\n"""A docstring naming orchestrator.core.job is prose."""\n',
        "orchestrator/cli.py": 'CMD = ["python", "-m", "orchestrator.cli"]\n',  # the same layer: fine
    })
    assert string_crossings(root) == {"actors/reward.py": ["orchestrator.builtin.world:annotator_reward"]}


def test_the_check_sees_a_config_default_naming_a_module():
    @dataclasses.dataclass
    class Reward:
        function: str = "orchestrator.builtin.world:annotator_reward"

    @dataclasses.dataclass
    class Job:
        reward: Reward = dataclasses.field(default_factory=Reward)
        components: list = dataclasses.field(default_factory=lambda: [Reward("builtin:annotator")])

    strings = config_strings(Job())
    assert strings == {"reward.function": "orchestrator.builtin.world:annotator_reward", "components.0.function": "builtin:annotator"}
    assert [k for k, v in strings.items() if IMPORT_STRING.match(v)] == ["reward.function"]
