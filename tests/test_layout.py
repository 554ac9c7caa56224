"""The house rules the README's layout states, read from the source: imports flow one way (no
cycles), formatters are pure, storage never imports bot, only config reads the environment."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "storage")
# What a formatter may import from bot: plain records, Block Kit and text helpers, the pure query
# grammar, the error types, and other formatters.
FORMATTER_MAY_IMPORT = {"bot.records", "bot.blocks", "bot.text", "bot.query", "bot.errors"}
IMPURE = {"httpx", "slack_sdk", "slack_bolt", "sqlite3", "sqlite_utils", "storage", "apscheduler", "os"}


# The source is parsed in a child process: CPython 3.11's ``ast.parse`` shares a recursion counter
# with every thread of the process, and a background thread of an earlier test that formats a
# traceback at the same moment (``traceback`` parses source for its carets) makes it raise
# "SystemError: AST constructor recursion depth mismatch".
_FACTS = r"""
import ast, json, sys
from pathlib import Path

root, packages = Path(sys.argv[1]), sys.argv[2:]
modules = {
    f"{pkg}.{path.stem}": ast.parse(path.read_text(), str(path))
    for pkg in packages
    for path in sorted((root / pkg).glob("*.py"))
}
known = set(modules)
imports, env_reads = {}, {}
for name, tree in modules.items():
    package = name.rsplit(".", 1)[0]
    found, reads = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = f"{package}.{module}" if module else package
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known}
        if (isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "environb"}) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in {"environ", "getenv"} for a in node.names)
        ):
            reads.append(getattr(node, "lineno", 0))
    imports[name], env_reads[name] = sorted(found), reads
print(json.dumps({"imports": imports, "env_reads": env_reads}))
"""


@functools.cache
def _facts() -> dict[str, dict[str, list[Any]]]:
    """Per module of bot/ and storage/: what it imports (``from bot import x`` counts as ``bot.x``
    when that is a module) and the lines where it reads the environment."""
    done = subprocess.run(
        [sys.executable, "-c", _FACTS, str(ROOT), *PACKAGES], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _graph() -> dict[str, set[str]]:
    return {name: set(deps) for name, deps in _facts()["imports"].items()}


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
    for name, lines in _facts()["env_reads"].items():
        if name != "bot.config":
            assert not lines, f"{name} line {lines[0]} reads the environment"
