"""The package keeps the layer stack its README's "Architecture" section writes down.

The rule is read from the README (one numbered line per layer, naming its modules in backticks), and every import in
``src/mobilevit`` (module level or inside a function) is checked against it: a module imports only from its own layer
or below, the modules import each other in no circle, and no private name crosses modules. Functions stay short.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mobilevit"
MAX_FUNCTION_LINES = 80


def readme_layers() -> dict[str, int]:
    """``{"mobilevit.layers": 2, "mobilevit.errors": 1, ...}`` from the README's numbered architecture list."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, line in re.findall(r"^(\d+)\. (.+)$", section, flags=re.MULTILINE):
        head = line.split(" — ", 1)[0]
        for name in re.findall(r"`([^`]+)`", head):
            layers["mobilevit." + name.removesuffix(".py").removesuffix("/").replace("/", ".")] = int(number)
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import of a ``mobilevit`` module in ``path``."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "mobilevit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "mobilevit":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / submodule.replace(".", "/")
                ).is_dir()
                found.append((submodule, "", node.lineno) if is_module else (target, alias.name, node.lineno))
    return found


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_the_readme_names_every_part_of_the_package() -> None:
    layers = readme_layers()
    assert len(set(layers.values())) >= 8, layers
    faceless = [module_name(p) for p in SOURCES if p != PACKAGE / "__init__.py"]
    unplaced = sorted(m for m in faceless if layer_of(m, layers) is None)
    assert not unplaced, f"modules the README's architecture section does not place: {unplaced}"


def test_imports_only_point_down() -> None:
    layers = readme_layers()
    upward = []
    for path in SOURCES:
        here = module_name(path)
        if here == "mobilevit":  # the package's face re-exports the public API from every layer
            continue
        for target, _, line in imports(path):
            theirs, ours = layer_of(target, layers), layer_of(here, layers)
            if theirs is None or ours is None or theirs > ours:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({ours}) imports {target} ({theirs})")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        here = module_name(path)
        if here == "mobilevit":
            continue
        graph[here] = {t for t, _, _ in imports(path) if t != here and t != "mobilevit"}
    modules = {module_name(p) for p in SOURCES}

    def resolve(target: str) -> str:  # "mobilevit.weights.entries.Preprocess" -> the module that defines it
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        return target

    graph = {m: {resolve(t) for t in ts} - {m, "mobilevit"} for m, ts in graph.items()}
    # a package's __init__ that re-exports its own submodules is not a circle with them
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_private_name_crosses_modules() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
        for path in SOURCES
        for target, name, line in imports(path)
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not crossing, "\n".join(crossing)


def test_functions_are_short() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in SOURCES
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)


def test_opening_a_runtime_does_not_reach_into_exporting() -> None:
    """The runtimes and the predictors that open them read an exported file's record and the format table from
    ``runtime/``: nothing there imports the exporters."""
    readers = [p for p in SOURCES if p.parent.name == "runtime" or p.name in ("predict.py", "segment.py")]
    reaching = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in readers
        for target, _, line in imports(path)
        if target == "mobilevit.export" or target.startswith("mobilevit.export.")
    ]
    assert not reaching, "\n".join(reaching)


TASK_COMPARISON = re.compile(
    r"""(==|!=|\bis\b|\bin\b)\s*\(?\s*["'](classification|segmentation)["']|["'](classification|segmentation)["']\s*(==|!=)"""
)


def test_task_names_are_compared_only_by_the_tasks() -> None:
    """Code outside ``tasks/`` asks the model's task object; it never compares task names. Below the task layer the
    models say what they need said (their ``output_axes``, their ``label_set``) and the exported files record it."""
    comparing = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in SOURCES
        if path.parent.name != "tasks"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if TASK_COMPARISON.search(line)
    ]
    assert not comparing, "\n".join(comparing)


def test_the_task_list_is_declared_once() -> None:
    """No tuple or list of task names outside the registry (``tasks/``)."""
    declaring = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in SOURCES
        if path.parent.name != "tasks"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"""["']classification["']\s*,\s*["']segmentation["']""", line)
    ]
    assert not declaring, "\n".join(declaring)
