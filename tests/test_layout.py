"""The package's shape (the design notes' layout): stage folders, arrows pointing down,
no cycles, small modules, a thin callback, and the public names other code relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "depth"
MAX_LINES = 400
MAX_CALLBACK_LINES = 300
STAGES = ("meters", "accounting", "lightning", "record", "tracking", "serving", "gpt", "cli")
# What each stage may import (besides itself). Arrows point down the path of a joule.
ALLOWED = {
    "meters": set(),
    "accounting": {"meters"},
    "record": set(),
    "tracking": {"record"},
    "lightning": {"accounting", "meters", "record", "tracking"},
    "serving": {"meters", "record", "tracking", "gpt"},
    "gpt": {"lightning", "record", "tracking", "meters", "accounting"},
    "cli": set(STAGES) | {"depth"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every depth module `path` imports, at the top or inside functions (lazy)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("depth"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("depth"):
                continue
            for alias in node.names:  # `from depth.x import y` may name a module y
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES} for name, path in MODULES.items()}


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "depth"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_stage_folders_exist_and_say_what_they_do():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage}/__init__.py"


def test_no_module_sits_outside_a_stage():
    loose = [m for m in MODULES if m.count(".") == 1 and stage_of(m) not in STAGES]
    assert loose == []


def test_no_import_cycle_between_modules():
    # Package __init__ modules that only re-export are edges to their children, which is
    # how Python loads them; a child importing its own package's __init__ is a cycle too.
    assert find_cycle(GRAPH) is None


def test_no_import_cycle_between_stages():
    stages: dict[str, set[str]] = {}
    for module, deps in GRAPH.items():
        stages.setdefault(stage_of(module), set()).update(
            stage_of(d) for d in deps if stage_of(d) != stage_of(module))
    assert find_cycle(stages) is None


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "cli"])
def test_arrows_point_down_the_stages(stage):
    wrong = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if stage_of(m) == stage
                   for d in deps if stage_of(d) not in ALLOWED[stage] | {stage})
    assert wrong == []


def test_no_module_over_the_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_callback_module_is_thin():
    lines = len((PACKAGE / "lightning" / "callback.py").read_text().splitlines())
    assert lines <= MAX_CALLBACK_LINES


def test_public_names():
    from depth import DepthCallback, Provenance, read_provenance
    from depth.meters import EnergyMeter, auto_meter

    assert DepthCallback.__module__ == "depth.lightning.callback"
    assert callable(read_provenance) and callable(auto_meter)
    assert Provenance.__module__ == "depth.record.provenance"
    assert hasattr(EnergyMeter, "read")
    from depth import inference_table, log_inference, measure_inference  # issue 14.6

    assert measure_inference.__module__ == "depth.serving.api"
    assert log_inference.__module__ == "depth.serving.attach"
    assert inference_table.__module__ == "depth.serving.table"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
