"""The codebase's shape, read from its AST: no import cycle inside finetuner/, small modules and
functions, prompts only through the wizard and ui, comments that say why rather than which issue.

Run alone: `python -m pytest -q tests/test_layout.py` (a second, no models). A module or function may
pass a limit when a comment in it starting with `# long:` says why.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "finetuner"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [ROOT / "finetune_cli.py"]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
PROMPT_MODULES = ("finetuner/ui.py", "finetuner/wizard")  # the only places that may ask questions


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in SOURCES}


def imported_modules(path: Path) -> set[str]:
    """finetuner modules `path` imports, at module level or inside functions alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("finetuner"):
                found.add(name)
    found.discard(module_name(path))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_finetuner():
    graph = {name: {m for m in imported_modules(path) if m != "finetuner"} for name, path in MODULES.items()
             if name.startswith("finetuner")}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _explained(lines: list[str]) -> bool:
    return any(line.strip().startswith("# long:") for line in lines)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_are_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES or _explained(lines[:30]), f"{len(lines)} lines"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = lines[node.lineno - 1:node.end_lineno]
            assert len(body) <= MAX_FUNCTION_LINES or _explained(body), f"{node.name}: {len(body)} lines"


def test_questions_are_asked_only_by_the_wizard_and_ui():
    askers = [str(p.relative_to(ROOT)) for p in SOURCES if "questionary" in imported_names(p)]
    assert all(a.startswith(PROMPT_MODULES) for a in askers), askers


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_training_stage_never_learns_where_the_teacher_signal_comes_from():
    training = [p for p in SOURCES if "training" in p.relative_to(ROOT).parts]
    assert training
    assert not [p.name for p in training if "finetuner.teachers.topk_cache" in imported_modules(p)]


def test_comments_say_why_not_which_issue():
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"#.*\bissues? \d+|\(issue \d+\)", line, re.IGNORECASE)]
    assert cited == []
