"""The import structure of docs/design.md, section 1: stage modules are leaves that only the stage
runner and the command line reach, and no modules import each other in a circle.

Imports are read from the source (module level and inside functions alike), not by importing.
An import of `a.b` is an edge to `a.b`; the package `a` that Python initialises first is not
counted, so a package's `__init__` may import its own modules. The runner imports the registered
stages by name (`importlib`): those edges, to the module that declares each stage, are added from
its registry.
"""
from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pipeline
from pipeline import stages

RUNNER = "pipeline.stages"
REPO = Path(__file__).resolve().parents[1]


def pipeline_modules() -> dict[str, Path]:
    modules = {"pipeline": Path(pipeline.__file__)}
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        modules[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return modules


def imported(path: Path, package: str, known) -> set[str]:
    """The modules among `known` that the file imports anywhere in it; `package` resolves
    relative imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from a import b` names the module a.b where there is one, else something of a
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = pipeline_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported(path, package, modules) - {name}
    graph[RUNNER] |= {stages.module(stage).__name__ for stage in stages.STAGES}
    return graph


def is_stage_module(name: str) -> bool:
    return name.startswith(f"{RUNNER}.")


def test_only_the_runner_and_the_command_line_import_stages():
    graph = import_graph()
    importers = {name for name, targets in graph.items()
                 if any(target == RUNNER or is_stage_module(target) for target in targets)}
    assert importers <= {RUNNER, "pipeline.cli"}, importers - {RUNNER, "pipeline.cli"}


def test_stage_modules_are_leaves():
    graph = import_graph()
    reaching = {name: sorted(t for t in targets if t == RUNNER or is_stage_module(t))
                for name, targets in graph.items() if is_stage_module(name)}
    assert {name: targets for name, targets in reaching.items() if targets} == {}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (its first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return None

    return next((cycle for name in sorted(graph) if (cycle := visit(name))), None)


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_benchmarks_use_only_the_runner_of_the_stages_and_where_it_puts_their_outputs():
    allowed = {"execute", "execute_all", "output_path", "run_outputs"}
    for path in sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(RUNNER) for a in node.names), path.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(RUNNER):
                assert node.module == RUNNER, (path.name, node.module)
                assert {a.name for a in node.names} <= allowed, (path.name, node.lineno)
