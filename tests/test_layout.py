"""The house's shape, read from the code (no import is run): module-level imports between
rlme's modules form no loop, the client never imports the service or the trainers, the
service never imports the trainers (not even inside a function: the command line that calls
both lives in rlme.trainer.cli), and every file says what it holds in at most 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("service", "client", "trainer")


def modules() -> dict[str, Path]:
    found = {}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            relative = path.relative_to(ROOT).with_suffix("")
            name = ".".join(("rlme", *relative.parts))
            found[name.removesuffix(".__init__")] = path
    return found


def module_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The rlme modules `path` imports at module level (not inside functions)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                imported.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return {name for name in imported if name in known}


def test_no_import_loops_between_modules() -> None:
    known = modules()
    graph = {name: module_imports(path, known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                loop = path[path.index(child) :] + [child] if child in path else [name, child]
                raise AssertionError(f"import loop: {' -> '.join(loop)}")
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_parts_import_downwards_only() -> None:
    known = modules()
    for name, path in known.items():
        imported = module_imports(path, known)
        if name.startswith("rlme.client"):
            assert not {i for i in imported if not i.startswith("rlme.client")}, (name, imported)
        if name.startswith("rlme.service"):
            assert not {i for i in imported if i.startswith("rlme.trainer")}, (name, imported)


def test_the_service_never_imports_the_trainers_even_lazily() -> None:
    for name, path in modules().items():
        if name.startswith("rlme.service"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith("rlme.trainer"), (name, node.module)
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("rlme.trainer") for a in node.names), name


def test_every_file_says_what_it_holds_and_stays_small() -> None:
    for path in modules().values():
        text = path.read_text()
        if text.strip():  # an empty __init__.py holds nothing to describe
            assert ast.get_docstring(ast.parse(text)), f"{path} has no docstring saying what it holds"
        assert len(text.splitlines()) <= 500, f"{path} has {len(text.splitlines())} lines"
