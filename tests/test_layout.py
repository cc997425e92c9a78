"""The layout's rules, read from the source (ast), so a future import cycle, an upward import or
a task-name comparison outside the task plug-ins fails CI (docs/extending.md, DESIGN)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ftexport": ROOT / "ftexport", "ftexport_runtime": ROOT / "runtime" / "ftexport_runtime"}

# Layers of the toolchain, lowest first: a module may import its own layer and those below.
LAYERS = ["core", "data", "tasks", "train", "export", "judge", "ship", "recipe", ("pipeline", "doctor"), "cli"]
TASK_NAMES = {"text-classification", "token-classification", "text-generation", "feature-extraction"}


def modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the same package that `name` imports (at any depth of the file, lazy ones too)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # ftexport/__init__: the version only
        return -1
    for i, names in enumerate(LAYERS):
        if parts[1] in ((names,) if isinstance(names, str) else names):
            return i
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS (and to DESIGN's layout)")


# Packages import their own parents' __init__ only for registries; a package's __init__ and
# its children are one unit for the cycle check's purpose when the child is what the parent
# re-exports. Cycles are checked module by module all the same.
@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    cycle = find_cycle(graph(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_upward_imports():
    bad = [
        f"{m} (layer {LAYERS[layer(m)]}) imports {d} (layer {LAYERS[layer(d)]})"
        for m, deps in graph("ftexport").items()
        for d in deps
        if layer(d) > layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_runtime_imports_no_toolchain():
    for path in modules("ftexport_runtime").values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for n in names:
                assert n.split(".")[0] not in ("ftexport", "torch", "transformers", "optimum", "peft"), f"{path}: imports {n}"


def _task_name_constants(path: Path) -> list[int]:
    """Lines of string constants equal to a task name, docstrings excepted."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in TASK_NAMES and id(n) not in docstrings]


def test_only_task_plugins_name_a_task():
    """Outside ftexport/tasks/ and the runtime's heads/, no code compares against (or looks up
    by) a task name: stages ask the task object (capabilities, hooks) instead."""
    allowed = [PACKAGES["ftexport"] / "tasks", PACKAGES["ftexport_runtime"] / "heads"]
    hits = []
    for package in PACKAGES:
        for path in modules(package).values():
            if any(path.is_relative_to(a) for a in allowed):
                continue
            hits += [f"{path.relative_to(ROOT)}:{line}" for line in _task_name_constants(path)]
    assert not hits, "task names outside the task plug-ins:\n" + "\n".join(hits)


def test_every_module_says_what_it_is_for():
    for package in PACKAGES:
        for path in modules(package).values():
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc, f"{path.relative_to(ROOT)} has no module docstring"


def test_ruff_is_clean():
    ruff = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True)
    if ruff.returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' installs it)")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "ftexport", "runtime/ftexport_runtime", "tests", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
