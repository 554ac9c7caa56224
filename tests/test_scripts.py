"""scripts/run: no package index once installed, and the user's directory stays the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path) -> Path:
    """A copy of the repository's script and pyproject.toml, with a stand-in .venv that records
    what it is asked to do (so nothing is installed and no index is reached)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "run", repo / "scripts" / "run")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(ROOT / "requirements.txt", repo / "requirements.txt")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "python $*" >> {calls}\n')
    (bin_dir / "wflogs").write_text(f'#!/bin/sh\necho "wflogs $* in $(pwd)" >> {calls}\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return repo


def _run(repo: Path, cwd: Path, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_INDEX_URL"] = "http://127.0.0.1:9/unreachable"
    subprocess.run([str(repo / "scripts" / "run"), *args], cwd=cwd, env=env, check=True, timeout=30)
    calls = repo.parent / "calls.txt"
    lines = calls.read_text().splitlines()
    calls.unlink()
    return lines


def test_run_installs_once_then_starts_without_the_package_index_from_the_users_directory(tmp_path: Path):
    repo = _checkout(tmp_path)
    here = tmp_path / "somewhere" / "else"
    here.mkdir(parents=True)
    first = _run(repo, here, "check")
    pip = "python -m pip install -q --disable-pip-version-check"
    assert first[0] == f"{pip} --require-hashes -r {repo}/requirements.txt"  # the locked versions
    assert first[1] == f"{pip} --no-deps -e {repo}"
    assert first[2] == f"wflogs check in {here}"  # wflogs.toml and WFLOGS_DB resolve from here
    assert _run(repo, here) == [f"wflogs run in {here}"]  # installed: no pip, no index

    for changed in ("pyproject.toml", "requirements.txt"):  # a new dependency, a new lock: install again
        with (repo / changed).open("a") as fh:
            fh.write("\n# changed\n")
        again = _run(repo, here, "poll", "--once")
        assert again[0] == f"{pip} --require-hashes -r {repo}/requirements.txt"
        assert again[2] == f"wflogs poll --once in {here}"
        assert _run(repo, here, "check") == [f"wflogs check in {here}"]
