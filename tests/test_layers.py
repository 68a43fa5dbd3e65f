"""The layers of DESIGN.md, checked on the source: imports go down only (orchestrator -> actors -> cluster
-> losses), lazy imports inside functions included. tests/test_losses_common.py checks that losses/
imports nothing of ours."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "actors": {"orchestrator"},
    "cluster": {"orchestrator", "actors"},
    "losses": {"orchestrator", "actors", "cluster"},
}


def imported_roots(path: pathlib.Path) -> set[str]:
    """Top-level package names imported anywhere in the file (module level or inside functions)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_go_down_only(layer):
    files = sorted((ROOT / layer).glob("*.py"))
    assert files
    bad = {f.name: sorted(imported_roots(f) & FORBIDDEN[layer]) for f in files if imported_roots(f) & FORBIDDEN[layer]}
    assert not bad, f"{layer}/ imports a higher layer: {bad}"


def test_the_check_sees_a_lazy_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from orchestrator.config import PPOConfig\n    import actors.engine\n")
    assert imported_roots(path) == {"orchestrator", "actors"}
