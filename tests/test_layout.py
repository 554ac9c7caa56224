"""The house rules the README's layout states, read from the source: imports flow one way (no
cycles), formatters are pure, storage never imports bot, only config reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "storage")
# What a formatter may import from bot: plain records, Block Kit and text helpers, the pure query
# grammar, the error types, and other formatters.
FORMATTER_MAY_IMPORT = {"bot.records", "bot.blocks", "bot.text", "bot.query", "bot.errors"}
IMPURE = {"httpx", "slack_sdk", "slack_bolt", "sqlite3", "sqlite_utils", "storage", "apscheduler", "os"}


def _modules() -> dict[str, ast.Module]:
    return {
        f"{pkg}.{path.stem}": ast.parse(path.read_text(), str(path))
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).glob("*.py"))
    }


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every module ``name`` imports (``from bot import x`` counts as ``bot.x`` when that is a module)."""
    package = name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = f"{package}.{module}" if module else package
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, tree, known) for name, tree in modules.items()}


def test_imports_have_no_cycles() -> None:
    full = _graph()
    graph = {name: {d for d in deps if d in full} for name, deps in full.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_formatters_import_only_records_blocks_text_query_errors_and_each_other() -> None:
    for name, deps in _graph().items():
        if not name.endswith("_format"):
            continue
        ours = {d for d in deps if d.startswith("bot.") and d != "bot"}
        wrong = {d for d in ours if d not in FORMATTER_MAY_IMPORT and not d.endswith("_format")}
        impure = {d for d in deps if d.split(".")[0] in IMPURE}
        assert not wrong and not impure, f"{name} imports {sorted(wrong | impure)}"


def test_storage_never_imports_bot() -> None:
    for name, deps in _graph().items():
        if name.startswith("storage."):
            assert not {d for d in deps if d.split(".")[0] == "bot"}, f"{name} imports bot"


def test_only_config_reads_the_environment() -> None:
    for name, tree in _modules().items():
        if name == "bot.config":
            continue
        for node in ast.walk(tree):
            reads = (isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "environb"}) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and any(a.name in {"environ", "getenv"} for a in node.names)
            )
            assert not reads, f"{name} line {getattr(node, 'lineno', '?')} reads the environment"
