"""The Dify fake as a standalone server, for running wflogs against it by hand or from a container.

    python -m tests.fakes.dify_server [--host 127.0.0.1] [--port 0] [--key app-...] [--failed 3] [--stopped 1]

It serves one workflow app holding a few succeeded runs plus ``--failed`` failed and ``--stopped``
stopped runs that ended in the last minutes, prints what a client needs as ``NAME=value`` lines
(``DIFY_API_URL``, ``DIFY_API_KEY``, then one ``RUN_ID`` per run wflogs must alert on, then
``READY``) and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Sequence

from tests.fakes.dify import DifyServer, FakeDify, FakeRun

ERRORS = (
    "Node LLM run failed: [openai] Request timed out after 60s",
    "Node HTTP Request run failed: 502 Bad Gateway from https://crm.internal/api",
    "Variable #sys.query# not found <script>",
)


def populate(
    fake: FakeDify, *, failed: int, stopped: int, now: int, key: str | None = None
) -> tuple[str, list[FakeRun]]:
    """One workflow app with succeeded runs and the given failed/stopped ones; returns (key, alertable)."""
    app = fake.add_app("Support Bot", key=key)
    for i in range(3):
        fake.add_log(app, status="succeeded", at=now - 200 - 10 * i, session=f"user_ok_{i}")
    alertable = [
        fake.add_log(
            app,
            status="failed",
            at=now - 60 - 20 * i,
            error=ERRORS[i % len(ERRORS)],
            session=f"user_workflow_{100 + i}",
        )
        for i in range(failed)
    ]
    alertable += [
        fake.add_log(app, status="stopped", at=now - 30 - 20 * i, session=f"user_stopped_{i}")
        for i in range(stopped)
    ]
    return app.key, alertable


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.dify_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--key", help="the app's API key (default: a random app-... key)")
    parser.add_argument("--failed", type=int, default=3, help="failed runs to serve (default 3)")
    parser.add_argument("--stopped", type=int, default=1, help="stopped runs to serve (default 1)")
    args = parser.parse_args(argv)

    fake = FakeDify()
    key, alertable = populate(
        fake, failed=args.failed, stopped=args.stopped, now=int(time.time()), key=args.key
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with DifyServer(fake, host=args.host, port=args.port) as server:
        lines = [f"DIFY_API_URL={server.url}", f"DIFY_API_KEY={key}"]
        lines += [f"RUN_ID={run.run_id}" for run in alertable]
        print("\n".join([*lines, "READY"]), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
