"""`wflogs check` tells the previous instance by host, pid and when, in words, and whether PORT is
free (issue 18 item 11)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from bot.cli import main
from bot.lease import Lease
from storage.db import Store
from tests.conftest import isolate_cli


def _check(monkeypatch, tmp_path: Path, **env: str) -> str:
    isolate_cli(
        monkeypatch,
        tmp_path,
        DIFY_API_KEY="app-" + "k" * 24,
        DIFY_API_URL="http://127.0.0.1:9/v1",  # nothing listens there
        WFLOGS_DB=str(tmp_path / "wflogs.db"),
        WFLOGS_HTTP_HOST="127.0.0.1",
        **env,
    )
    out = io.StringIO()
    main(["check"], out=out, err=io.StringIO())
    return out.getvalue()


def test_a_clean_stop_names_host_pid_and_when(monkeypatch, tmp_path: Path):
    lease = Lease(Store.open(str(tmp_path / "wflogs.db")), ttl=600, owner="vm-7:16919:4026531836.910b")
    assert lease.tick()
    lease.release()
    said = _check(monkeypatch, tmp_path)
    assert "no instance is active: the last one (pid 16919 on vm-7) stopped cleanly" in said, said
    assert "just now" in said or " ago" in said
    assert "4026531836" not in said and "910b" not in said


def test_check_says_whether_port_is_free(monkeypatch, tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    said = _check(monkeypatch, tmp_path, PORT=str(free))
    assert f"✓ PORT {free} is free on 127.0.0.1" in said, said
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        said = _check(monkeypatch, tmp_path, PORT=str(taken))
    assert f"! PORT {taken} on 127.0.0.1 is in use" in said, said
