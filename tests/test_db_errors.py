"""An unusable WFLOGS_DB is one line naming WFLOGS_DB, the path and the fix, from every command."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.errors import DatabaseError
from bot.runtime import open_store
from tests.conftest import isolate_cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["check"], ["poll", "--once"], ["run"], ["digest", "--now"], ["search", "failed"]]


def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db: str, argv: list[str]) -> tuple[int, str]:
    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("DIFY_API_KEY", "app-" + "k" * 24)
    monkeypatch.setenv("DIFY_API_URL", "http://127.0.0.1:9/v1")  # never reached: the database fails first
    monkeypatch.setenv("WFLOGS_DB", db)
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, err.getvalue()


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_missing_directory_is_named_with_the_fix_by_every_command(monkeypatch, tmp_path: Path, argv):
    db = str(tmp_path / "nowhere" / "wflogs.db")
    code, err = run_cli(monkeypatch, tmp_path, db, argv)
    line = _one_line(err)
    assert code == 1
    assert f"WFLOGS_DB={db}" in line and f"the directory {tmp_path / 'nowhere'} does not exist" in line
    assert "create it" in line
    assert not (tmp_path / "nowhere").exists()


def test_a_directory_is_not_a_database(monkeypatch, tmp_path: Path):
    code, err = run_cli(monkeypatch, tmp_path, str(tmp_path), ["check"])
    line = _one_line(err)
    assert code == 1 and f"WFLOGS_DB={tmp_path} is a directory" in line and "give a file path" in line


def test_a_file_that_is_not_sqlite_is_left_alone(monkeypatch, tmp_path: Path):
    other = tmp_path / "notes.txt"
    other.write_text("my notes, not a database\n" * 50)
    code, err = run_cli(monkeypatch, tmp_path, str(other), ["poll", "--once"])
    line = _one_line(err)
    assert code == 1 and "is not an SQLite database" in line and "move that file away" in line
    assert other.read_text().startswith("my notes")  # not overwritten


def test_a_damaged_sqlite_file_is_reported(monkeypatch, tmp_path: Path):
    db = tmp_path / "wflogs.db"
    conn = sqlite3.connect(db)
    conn.execute("create table t (x)")
    conn.commit()
    conn.close()
    data = bytearray(db.read_bytes())
    data[16:100] = b"\xff" * 84  # the header after the magic string: page size and the rest
    db.write_bytes(bytes(data))
    code, err = run_cli(monkeypatch, tmp_path, str(db), ["check"])
    line = _one_line(err)
    assert code == 1 and f"WFLOGS_DB={db}" in line and "not a usable SQLite database" in line


def test_a_database_locked_for_long_is_named(tmp_path: Path):
    db = tmp_path / "wflogs.db"
    open_store(str(db)).db.conn.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with pytest.raises(DatabaseError) as caught:
            open_store(str(db), timeout=0.05)
    finally:
        holder.close()
    assert str(caught.value).startswith(
        f"WFLOGS_DB={db} is locked by another program; stop whatever holds it"
    )


def _without_override(argv: list[str]) -> list[str]:
    """Run as root without the capability to ignore file permissions (as any other user is)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]


def _check_process(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    """``wflogs check`` as a real process on ``db`` (without root's override, see above)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_", "SLACK_", "WFLOGS_"))}
    env.update(
        {"WFLOGS_DB": str(db), "DIFY_API_KEY": "app-" + "k" * 24, "PYTHONPATH": str(ROOT)},
        DIFY_API_URL="http://127.0.0.1:9/v1",
    )
    return subprocess.run(
        _without_override([sys.executable, "-m", "bot.cli", "check"]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_permission_is_named_with_the_fix(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "wflogs.db"
    open_store(str(db)).db.conn.close()
    db.chmod(0o444)
    data.chmod(0o555)
    try:
        done = _check_process(tmp_path, db)
    finally:
        data.chmod(0o755)
    line = _one_line(done.stderr)
    assert done.returncode == 1
    assert f"WFLOGS_DB={db} cannot be written (permission denied)" in line
    assert "let the user running wflogs write" in line


def test_a_read_only_file_in_a_writable_directory_is_named_by_check(tmp_path: Path):
    # SQLite opens a file it may not write read-only and only fails at the first real write, which
    # `check` never makes: the start-up probe must write.
    db = tmp_path / "wflogs.db"
    open_store(str(db)).db.conn.close()
    db.chmod(0o444)
    done = _check_process(tmp_path, db)
    line = _one_line(done.stderr)
    assert done.returncode == 1
    assert f"WFLOGS_DB={db} cannot be written (permission denied)" in line


def test_processes_starting_together_on_a_new_database_all_open_it(tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    code = "import sys; from storage.db import Store; Store.open(sys.argv[1]); print('ok')"
    for trial in range(3):
        path = tmp_path / f"new{trial}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(path)],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [o.strip() for o in outs] == ["ok"] * 4, outs


def test_a_read_only_file_system_is_named_as_such_by_check(tmp_path: Path):
    """A read-only mount (a container's read-only root, a remounted disk) is not a permission
    problem: giving the user write access would not help. A user+mount namespace makes one."""
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run([unshare or "unshare", "-rm", "true"], capture_output=True, check=False)
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no unprivileged user+mount namespaces here: cannot make a read-only mount")
    data = tmp_path / "ro"
    data.mkdir()
    db = data / "wflogs.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_", "SLACK_", "WFLOGS_"))}
    env.update(
        {"WFLOGS_DB": str(db), "DIFY_API_KEY": "app-" + "k" * 24, "PYTHONPATH": str(ROOT)},
        DIFY_API_URL="http://127.0.0.1:9/v1",
    )
    script = f'mount -t tmpfs -o ro none "{data}" && exec "{sys.executable}" -m bot.cli check'
    done = subprocess.run(
        [unshare or "unshare", "-rm", "sh", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = _one_line(done.stderr)
    assert done.returncode == 1
    assert f"WFLOGS_DB={db}: {data} is on a read-only file system" in line, line
    assert "permission denied" not in line and "let the user running wflogs" not in line


def test_the_path_and_the_problem_are_separated_by_a_colon(monkeypatch, tmp_path: Path):
    db = str(tmp_path / "nowhere" / "wflogs.db")
    _, err = run_cli(monkeypatch, tmp_path, db, ["check"])
    assert f"WFLOGS_DB={db}: the directory {tmp_path / 'nowhere'} does not exist; create it" in err
