"""The ``wflogs`` command line: ``run``, ``poll --once``, ``check``, ``search``, ``digest``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.config import (
    SPECIAL_MENTIONS,
    Settings,
    alert_channel_for,
    digest_channel_for,
    escalation_for,
    load_settings,
    mentions_for,
)
from bot.errors import DifyError, QueryError, WflogsError
from bot.lease import Lease, LeaseFence, lease_timings, view
from bot.logs import setup_logging
from bot.runtime import Runtime, database_error
from bot.text import duration, plural, strip_controls
from storage import STORAGE_ERRORS, subscriptions
from storage import journal as effects

log = logging.getLogger(__name__)


def _secrets(settings: Settings) -> list[str | None]:
    return [
        settings.slack_bot_token,
        settings.slack_app_token,
        settings.slack_signing_secret,
        *(app.api_key for app in settings.apps),
        settings.workspace.admin_key if settings.workspace else None,
        settings.workspace.password if settings.workspace else None,
    ]


def cmd_poll(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """One full cycle for every app, then exit (0 only if everything was polled and delivered)."""
    runtime = Runtime.build(settings, stream=out)
    lease = Lease(
        runtime.store, ttl=lease_timings(settings.poll_interval)[0], apps=[a.id for a in settings.apps]
    )
    try:
        if not lease.tick():
            err.write(
                f"wflogs: another wflogs ({lease.holder}) is active on {settings.db_path} and polls it; "
                "stop it first, or let it do the polling\n"
            )
            return 1
        runtime.fence(LeaseFence(lease))
        try:
            report = runtime.cycle()
        finally:
            lease.release()
    finally:
        runtime.close()
    for problem in report.problems:
        err.write(f"wflogs: {problem}\n")
    waiting = runtime.store.outbox_size()
    if waiting:
        err.write(f"wflogs: {waiting} alerts are waiting for Slack and will be retried\n")
    return 0 if report.ok and not waiting else 1


def cmd_check(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Validate configuration and reach every Dify app and Slack."""
    failures = 0
    source = settings.config_path or "environment variables"
    whole = f", the Dify workspace ({settings.workspace.way_in})" if settings.workspace else ""
    out.write(f"config: {source}, {len(settings.apps)} app(s){whole}, database {settings.db_path}\n")
    for warning in settings.warnings:
        out.write(f"! {warning}\n")
    runtime = Runtime.build(settings, stream=out, dify_backoff=0.2)
    try:
        _check_instances(runtime, out)
        _check_port(settings, out)
        if runtime.workspace is not None:
            failures += _check_workspace(runtime, out)
        for app in settings.apps:
            client = runtime.clients[app.id]
            try:
                info = client.info()
            except DifyError as exc:
                failures += 1
                out.write(f"✗ {app.label} at {app.api_url}: {exc}\n")
                continue
            version = info.dify_version or "unknown version"
            name = app.name or info.name
            if info.mode != "workflow":
                out.write(
                    f"! {name}: Dify {version}, but the app's mode is {info.mode!r}, not a workflow "
                    "app: it writes no workflow logs, so there is nothing to alert on\n"
                )
            else:
                out.write(f"✓ {name}: Dify {version}, workflow app at {app.api_url}\n")
            try:
                page = client.logs(limit=1)
                out.write(f"  {page.total:,} workflow runs logged\n")
            except DifyError as exc:
                failures += 1
                out.write(f"✗ {name}: cannot read workflow logs: {exc}\n")
        if runtime.web is None:
            out.write("! Slack: SLACK_BOT_TOKEN is not set; alerts are printed to the terminal\n")
        else:
            try:
                auth = runtime.web.auth_test()
                out.write(f"✓ Slack: signed in as {auth.get('user')} in {auth.get('team')}\n")
                channels = sorted({c for a in settings.apps if (c := alert_channel_for(settings, a))})
                channels += sorted(
                    {c for a in settings.apps if a.digest and (c := digest_channel_for(settings, a))}
                    - set(channels)
                )
                for channel in channels:
                    failures += _check_channel(runtime, channel, out)
                failures += _check_subscriptions(runtime, set(channels), out)
                failures += _check_mentions(runtime, out)
            except SlackApiError as exc:
                failures += 1
                from bot.service import slack_token_line

                out.write(f"✗ {slack_token_line(str(exc.response.get('error')))}\n")
            except (SlackClientError, OSError) as exc:
                failures += 1
                out.write(f"✗ Slack: cannot reach {settings.slack_api_url} ({type(exc).__name__})\n")
    finally:
        runtime.close()
    return 1 if failures else 0


def _check_workspace(runtime: Runtime, out: TextIO) -> int:
    """Workspace mode: Dify's version, the way in, the role, and every app by mode, watched or
    not and why."""
    from bot.workspace import MODE_NAMES

    console, workspace = runtime.console, runtime.workspace
    assert console is not None and workspace is not None
    try:
        caps = console.caps()
    except DifyError as exc:
        out.write(f"✗ Dify console at {console.base}: {exc}\n")
        return 1
    out.write(f"Dify console at {console.base}: Dify {console.version or 'unknown version'}\n")
    if caps.unsupported:
        out.write(f"✗ {caps.unsupported}\n")
        return 1
    try:
        role = console.role()
        # As the poller does: an app read with its own key and no name set is known by Dify's name.
        keyed = [a for a in runtime.settings.apps if not a.via_console and not a.name]
        found = workspace.discover(keyed=[runtime.poller.app_name(a) for a in keyed])
    except DifyError as exc:
        out.write(f"✗ {console.way_in}: {exc}\n")
        return 1
    out.write(f"✓ signed in with the {console.way_in}, role {role or 'unknown'}\n")
    by_mode: dict[str, list[str]] = {}
    for app in found.apps:
        mode = MODE_NAMES.get(app.mode, app.mode)
        line = f"  {'✓' if app.watched else '-'} {app.name}" + (
            "" if app.watched else f": not watched, {app.reason}"
        )
        by_mode.setdefault(mode, []).append(line)
    for mode in sorted(by_mode):
        out.write(f"{mode} apps ({len(by_mode[mode])}):\n")
        for line in by_mode[mode]:
            out.write(line + "\n")
    watched = len(found.watched)
    out.write(f"{watched} of {len(found.apps)} apps watched\n")
    return 0


def _ago(seconds: float, since: str = "") -> str:
    """``just now`` / ``since just now`` under a second, else ``for 4m 05s`` / ``4m 05s ago``."""
    if seconds < 1:
        return f"{since}just now"
    return f"for {duration(int(seconds))}" if since else f"{duration(int(seconds))} ago"


def _instance(owner: str) -> str:
    """An instance id (``host:pid:namespace.tag``) in words: ``pid 16919 on vm-7``."""
    parts = owner.split(":")
    if len(parts) >= 3 and parts[1].isdigit():
        return f"pid {parts[1]} on {':'.join(parts[:-2]) or parts[0]}"
    return owner


def _check_port(settings: Settings, out: TextIO) -> None:
    """Whether ``wflogs run`` could listen on WFLOGS_HTTP_HOST:PORT (health, metrics, Slack's HTTP)."""
    host, port = settings.http_host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            out.write(
                f"! PORT {port} on {host} is in use ({exc.strerror or exc}): a running wflogs, or another "
                "program; `wflogs run` needs it for /healthz (set PORT to a free one)\n"
            )
            return
    out.write(f"✓ PORT {port} is free on {host} (health, metrics and Slack's HTTP requests)\n")


def _check_instances(runtime: Runtime, out: TextIO) -> None:
    """Which ``wflogs run`` on this database is the active one (the lease), if any."""
    lease = view(runtime.store)
    now = time.time()
    if lease is None or not lease.owner:
        out.write("  no wflogs run has used this database yet\n")
    elif lease.alive(now):
        out.write(
            f"✓ active instance: {lease.owner} (active {_ago(now - lease.acquired_at, 'since ')}, "
            f"renewed {_ago(now - lease.renewed_at)}); "
            "others on this database stand by\n"
        )
        unwatched = [a.label for a in runtime.settings.apps if lease.apps and a.id not in lease.apps]
        if unwatched:
            out.write(
                f"! the active instance does not watch {', '.join(unwatched)} from this configuration; "
                "give every wflogs on one database the same apps\n"
            )
    elif lease.expires_at <= 0:
        out.write(
            f"  no instance is active: the last one ({_instance(lease.owner)}) stopped cleanly, "
            f"{_ago(now - lease.renewed_at)} (its last sign of life)\n"
        )
    else:
        out.write(
            f"! no instance is active: the lease of {_instance(lease.owner)} ran out "
            f"{duration(int(now - lease.expires_at))} ago (it stopped or lost the database); "
            f"a standby takes over within seconds\n"
        )


def _check_channel(runtime: Runtime, channel: str, out: TextIO) -> int:
    assert runtime.web is not None
    try:
        info = runtime.web.conversations_info(channel=channel)
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error == "missing_scope":
            out.write(f"! channel {channel}: cannot check without channels:read; assuming it is fine\n")
            return 0
        out.write(f"✗ channel {channel}: {error}: check the ID and invite the bot (/invite @wflogs)\n")
        return 1
    data = info.get("channel") or {}
    if not data.get("is_member") and not data.get("is_im"):
        # Posting (without chat:write.public) and CSV uploads (always) need the bot in the channel.
        out.write(
            f"✗ channel {channel} (#{data.get('name', '?')}): the bot is not a member, so alerts and "
            "CSV files cannot be posted; invite it with /invite @wflogs\n"
        )
        return 1
    out.write(f"✓ channel {channel} (#{data.get('name', '?')})\n")
    return 0


def _check_subscriptions(runtime: Runtime, checked: set[str], out: TextIO) -> int:
    """The channels subscribed from Slack (``/wflogs subscribe``): how many, and each one checked."""
    rows = subscriptions.all_rows(runtime.store)
    if not rows:
        return 0
    channels = sorted({r["channel"] for r in rows})
    made = plural(len(rows), "subscription")
    out.write(f"✓ {made} made from Slack with /wflogs subscribe, in {plural(len(channels), 'channel')}\n")
    return sum(_check_channel(runtime, c, out) for c in channels if c not in checked)


def _configured_mentions(settings: Settings) -> list[str]:
    """Every member and user-group ID the configuration mentions, in order of first use."""
    seen: list[str] = []
    for app in settings.apps:
        _after, escalate_to = escalation_for(settings, app)
        for mention in (*mentions_for(settings, app), *escalate_to):
            if mention not in SPECIAL_MENTIONS and mention not in seen:
                seen.append(mention)
    return seen


def _check_mentions(runtime: Runtime, out: TextIO) -> int:
    """Resolve the configured mentions with users.info and usergroups.list; 1 if any is unknown."""
    assert runtime.web is not None
    mentions = _configured_mentions(runtime.settings)
    users = [m for m in mentions if not m.startswith("S")]
    groups = [m for m in mentions if m.startswith("S")]
    failures = 0
    for user in users:
        try:
            info = runtime.web.users_info(user=user).get("user") or {}
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "missing_scope":
                out.write(
                    f"! mentions: cannot look up member IDs without the users:read scope "
                    f"({', '.join(users)} not checked); add it to the Slack app (see manifest.yml)\n"
                )
                break
            failures += 1
            out.write(f"✗ mention {user}: {error}: copy the member ID again (profile > ⋮ > Copy member ID)\n")
            continue
        name = info.get("real_name") or info.get("name") or "?"
        if info.get("deleted"):
            failures += 1
            out.write(f"✗ mention {user} ({name}) is a deactivated account; mention someone else\n")
        else:
            out.write(f"✓ mention {user} (@{info.get('name', '?')}, {name})\n")
    if groups:
        try:
            listed = runtime.web.usergroups_list(include_disabled=True).get("usergroups") or []
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "missing_scope":
                out.write(
                    f"! mentions: cannot look up user groups without the usergroups:read scope "
                    f"({', '.join(groups)} not checked); add it to the Slack app (see manifest.yml)\n"
                )
                return failures
            out.write(f"✗ mentions: usergroups.list failed: {error}\n")
            return failures + 1
        known = {g.get("id"): g for g in listed}
        for group in groups:
            found = known.get(group)
            if found is None:
                failures += 1
                out.write(f"✗ mention {group}: no such user group; copy its ID from the group's page\n")
            elif found.get("date_delete"):
                failures += 1
                handle = found.get("handle", "?")
                out.write(f"✗ mention {group} (@{handle}) is disabled; enable the group or remove it\n")
            else:
                out.write(f"✓ mention {group} (@{found.get('handle', '?')}, user group)\n")
    return failures


def cmd_run(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the bot until interrupted: poller on a schedule, plus whatever Slack serving is set up."""
    from bot.service import serve

    return serve(settings, out=out)


def cmd_digest(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Post the digest of the last 24 hours for every app now; the scheduled digest still goes out."""
    if not any(app.digest for app in settings.apps):
        err.write("wflogs: no app has the digest enabled (digest = false for every app)\n")
        return 1
    chart_file = getattr(args, "chart", None)
    if chart_file and settings.slack_enabled:
        err.write(
            "wflogs: --chart FILE is for terminal mode (no SLACK_BOT_TOKEN); in Slack the chart "
            "goes in the digest's thread\n"
        )
        return 2
    runtime = Runtime.build(settings, stream=out)
    try:
        report = runtime.digester.post_now(chart=bool(chart_file))
        problems = list(report.problems) + _deliver_planned(runtime, report.keys, err)
    finally:
        runtime.close()
    if chart_file:
        png = next(iter(report.charts.values()), None)
        try:
            if png is not None:
                Path(chart_file).write_bytes(png)
        except OSError as exc:
            problems.append(f"cannot write the chart to {chart_file}: {exc.strerror}")
        else:
            out.write(f"chart of the last 14 days written to {chart_file} ({len(png or b''):,} bytes)\n")
    for problem in problems:
        err.write(f"wflogs: {problem}\n")
    return 0 if not problems else 1


def _deliver_planned(runtime: Runtime, keys: list[str], err: TextIO, *, wait: float = 90.0) -> list[str]:
    """Post the planned messages named by ``keys``: this process does it when no ``wflogs run`` is
    active on the database, else the active one does (its next delivery pass) and this waits for it.
    Returns what did not reach Slack."""
    if not keys:
        return []
    settings = runtime.settings
    lease = Lease(
        runtime.store, ttl=lease_timings(settings.poll_interval)[0], apps=[a.id for a in settings.apps]
    )
    if lease.tick():
        runtime.fence(LeaseFence(lease))
        try:
            runtime.deliverer.deliver_planned()
        finally:
            lease.release()
    else:
        err.write(f"wflogs: the active wflogs ({lease.holder}) posts it; waiting for it\n")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if all((planned(runtime, k) or {}).get("state") in ("sent", "refused") for k in keys):
                break
            time.sleep(0.5)
    problems = []
    for key in keys:
        row = planned(runtime, key) or {}
        if row.get("state") != "sent":
            why = row.get("error") or "it is still waiting for Slack"
            problems.append(f"a digest was not posted to {row.get('channel')}: {why}; it is retried")
    return problems


def planned(runtime: Runtime, key: str) -> dict[str, Any] | None:
    """A planned Slack message of the journal, by key."""
    return effects.get(runtime.store, key)


def _search_text(words: Sequence[str]) -> str:
    """The query from the command line; the shell ate the quotes, so words with spaces get them back."""
    if len(words) == 1:
        return words[0]
    return " ".join(f'"{w}"' if any(c.isspace() for c in w) and '"' not in w else w for w in words)


def _slack_command(text: str) -> str | None:
    """The Slack-only command ``text`` starts with (mutes, subscriptions), if any; None for a search."""
    from bot.query import parse_mute_command
    from bot.subscriptions import parse_subscription_command

    for parser in (parse_mute_command, parse_subscription_command):
        try:
            if parser(text) is None:
                continue
        except QueryError:
            pass  # a malformed one is still that command
        return text.split()[0].lower()
    return None


def cmd_search(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Search every app's workflow runs with the /wflogs grammar and print a table.

    Exit 0 with an answer from every app, 1 when an app could not be searched (or has no
    such run), 2 when the query itself is wrong (with the usage line)."""
    from bot import search_format
    from bot.query import parse
    from bot.search import find_run, search, targets_for

    # The error first, on its own line; the usage below it.
    usage = f"{search_format.CLI_USAGE}\n(wflogs search help: statuses, times, examples)"
    text = _search_text(args.words)
    slack_only = _slack_command(text)
    if slack_only:
        err.write(
            f"wflogs: `{slack_only}` is a Slack command, about a channel: type `/wflogs {slack_only} ...` "
            f"in the channel (mutes and subscriptions are per channel; this terminal has none)\n{usage}\n"
        )
        return 2
    try:
        query = parse(text, now=time.time(), tz=settings.tz)
    except QueryError as exc:
        err.write(f"wflogs: {strip_controls(str(exc))}\n{usage}\n")
        return 2
    if query.kind == "help":
        out.write(search_format.cli_help() + "\n")
        return 0
    runtime = Runtime.build(settings, stream=err, dify_backoff=0.2)
    try:
        runtime.discover()  # workspace mode: every app of the workspace is searched
        targets = targets_for(
            runtime.settings, runtime.clients, runtime.poller.app_name, channel=None, wanted=query.app
        )
        if query.kind == "run":
            out.write(search_format.run_text(find_run(query, targets), tz=settings.tz))
            return 0
        result = search(query, targets, now=time.time(), workers=settings.concurrency, tz=settings.tz)
    except QueryError as exc:
        if not exc.usage:  # the query was right; the answer is no (an unknown run)
            err.write(f"wflogs: {strip_controls(str(exc))}\n")
            return 1
        err.write(f"wflogs: {strip_controls(str(exc))}\n{usage}\n")
        return 2
    finally:
        runtime.close()
    out.write(search_format.table(result, tz=settings.tz))
    failed = [a for a in result.apps if a.error]
    for hits in failed:
        err.write(f"wflogs: {strip_controls(hits.name)}: {strip_controls(hits.error or '')}\n")
    return 1 if failed else 0


COMMANDS = {"run": cmd_run, "poll": cmd_poll, "check": cmd_check, "digest": cmd_digest, "search": cmd_search}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``wflogs``."""
    parser = argparse.ArgumentParser(
        prog="wflogs", description="Slack alerts, search and digests for Dify workflow runs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", help="run the bot (poller, slash command, digest) until stopped")
    poll = sub.add_parser("poll", help="poll every app once and deliver alerts")
    poll.add_argument("--once", action="store_true", required=True, help="one cycle, then exit")
    sub.add_parser("check", help="check the configuration, Dify and Slack")
    digest = sub.add_parser("digest", help="post the daily digest of every app")
    digest.add_argument(
        "--now", action="store_true", required=True, help="the last 24 hours, now (the schedule is unchanged)"
    )
    digest.add_argument(
        "--chart", metavar="FILE", help="terminal mode: write the chart of the last 14 days to FILE (PNG)"
    )
    search = sub.add_parser(
        "search",
        help="search workflow runs like /wflogs does",
        description="The /wflogs grammar, e.g.: wflogs search failed since:2h '\"timed out\"'. "
        "`wflogs search help` shows it all: statuses, times, filters, examples, exit codes.",
    )
    search.add_argument("words", nargs=argparse.REMAINDER, help="the query (wflogs search help)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of the ``wflogs`` console script."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "search" and [w.lower() for w in args.words] in (["help"], ["--help"], ["-h"]):
        from bot.search_format import cli_help

        out.write(cli_help() + "\n")  # help needs no configuration
        return 0
    try:
        settings = load_settings()
    except WflogsError as exc:
        err.write(f"wflogs: configuration: {exc}\n")
        return 2
    setup_logging(
        _secrets(settings),
        level=logging.DEBUG if args.verbose else logging.INFO,
        json_lines=settings.log_format == "json",
    )
    previous = None if args.command == "run" else _exit_on_sigterm(err)  # `run` stops cleanly itself
    try:
        return _run_command(args, settings, out, err)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_command(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO) -> int:
    if args.command not in ("check", "run"):  # check prints them, `run` logs them as it starts
        for warning in settings.warnings:
            log.warning("%s", warning)
    try:
        return COMMANDS[args.command](settings, args, out, err)
    except WflogsError as exc:
        err.write(f"wflogs: {exc}\n")
        return 1
    except STORAGE_ERRORS as exc:
        # The database failed after it was opened (disk full, locked, file replaced underneath).
        err.write(f"wflogs: {database_error(settings.db_path, exc)}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def _exit_on_sigterm(err: TextIO) -> Any:
    """SIGTERM ends a one-off command at once, as it does any process by default.

    As PID 1 in a container a process gets no default action for SIGTERM, so without this
    ``docker stop`` during ``poll --once`` would wait out its timeout and then SIGKILL. Ending at
    once is safe: every write is a SQLite transaction, and a message in flight can at most be
    posted again by the next cycle (as after a kill)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, _frame: object) -> None:
        for stream in (sys.stdout, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            err.write("wflogs: stopped by SIGTERM\n")
            err.flush()
        except (OSError, ValueError):
            pass
        os._exit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
