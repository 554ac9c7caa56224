"""Delivery: turns the outbox into Slack messages, exactly once per run.

Pending alerts of a channel are planned into messages first (one per run, one
per group of runs sharing app, status and error shape, and one summary when a
storm has many shapes), and the plan is stored. Then each message is posted and
the runs it carries are marked sent in the same step, so a crash can repeat at
most the one post in flight and a Slack outage loses nothing: the rest waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot import alert_format as fmt
from bot.alert_format import Alert
from bot.errors import SlackError, SlackPermanentError
from bot.notifier import PERMANENT, Sink
from storage import Store

log = logging.getLogger(__name__)

# At most this many top-level messages per channel from one plan; the rest of a
# storm goes into a single summary whose runs are listed in its thread.
MAX_MESSAGES_PER_PLAN = 5
# More unlisted runs than this go into a CSV file rather than thread replies.
CSV_THRESHOLD = 200
KEEP_SENT_SECONDS = 7 * 86400


@dataclass
class DeliveryResult:
    """What one delivery pass did."""

    runs_delivered: int = 0
    posts: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    # Messages Slack refused on their own (the channel's others went out).
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


# Slack errors that say nothing more can go to the channel now (the rest of its
# messages would meet the same); any other refusal is about one message only.
CHANNEL_ERRORS = set(PERMANENT) | {"ratelimited", "unreachable", "fatal_error"}


def _stops_channel(exc: SlackError) -> bool:
    error = exc.error or ""
    return error in CHANNEL_ERRORS or error.startswith("http_")


class Deliverer:
    """Drains the outbox into a :class:`Sink`."""

    def __init__(
        self,
        *,
        store: Store,
        sink: Sink,
        now: Callable[[], float] = time.time,
        max_messages: int = MAX_MESSAGES_PER_PLAN,
        csv_threshold: int = CSV_THRESHOLD,
        channels: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self._now = now
        self.max_messages = max_messages
        self.csv_threshold = csv_threshold
        # Each app's current alert channel: alerts not yet in Slack follow a changed config.
        self.channels = dict(channels or {})
        self._lock = threading.Lock()

    def deliver_all(self) -> DeliveryResult:
        """Deliver every pending alert; a channel that fails keeps its alerts for later."""
        with self._lock:  # one writer of channel messages at a time
            result = DeliveryResult()
            if self.channels:
                moved = self.store.rebind_channels(self.channels)
                if moved:
                    log.info("%d waiting alerts follow their app to its current channel", moved)
            for channel in self.store.pending_channels():
                try:
                    self.deliver_channel(channel, result)
                except SlackPermanentError as exc:
                    result.errors[channel] = str(exc)
                    log.error("alerts for %s are waiting: %s", channel, exc)
                except SlackError as exc:
                    result.errors[channel] = str(exc)
                    log.warning("alerts for %s are waiting: %s", channel, exc)
            self.store.prune_outbox(int(self._now()) - KEEP_SENT_SECONDS)
            return result

    def plan(self, channel: str) -> None:
        """Group the channel's unplanned alerts into messages and store the plan.

        Messages planned earlier that never reached Slack (an outage) are planned
        again together with the new alerts, so a backlog is still at most
        ``max_messages`` top-level messages.
        """
        self.store.release_unposted(channel)
        rows = self.store.unplanned_alerts(channel)
        if not rows:
            return
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault((row["app_id"], row["status"], row["group_key"]), []).append(row)
        ranked = sorted(groups.values(), key=len, reverse=True)
        own, rest = ranked, []
        if len(ranked) > self.max_messages:
            own, rest = ranked[: self.max_messages - 1], ranked[self.max_messages - 1 :]
        now = int(self._now())
        for members in sorted(own, key=lambda g: g[0]["id"]):
            kind = "single" if len(members) == 1 else "group"
            self.store.plan_message(channel, kind, [r["id"] for r in members], now)
        if rest:
            ids = sorted(r["id"] for members in rest for r in members)
            self.store.plan_message(channel, "summary", ids, now)

    def deliver_channel(self, channel: str, result: DeliveryResult) -> None:
        """Plan, then post every open message of ``channel`` in order.

        An error that concerns the channel (membership, token, outage, rate limit)
        stops it: the rest waits. A refusal of one message is recorded (and told
        once) and the other messages still go out.
        """
        self.plan(channel)
        top_level = 0
        for message in self.store.open_messages(channel):
            if message["parent_ts"] is None:
                if top_level >= self.max_messages:
                    break  # never more than max_messages new channel messages a cycle
                top_level += 1
            try:
                self._deliver(channel, message, result)
            except SlackError as exc:
                if _stops_channel(exc):
                    raise
                if message.get("last_error") != str(exc):
                    log.error("Slack refused a message for %s; the others go on: %s", channel, exc)
                self.store.message_error(message["id"], str(exc))
                result.refused[channel] = str(exc)

    def _deliver(self, channel: str, message: dict[str, Any], result: DeliveryResult) -> None:
        rows = self.store.message_alerts(message["id"])
        alerts = [Alert.from_row(r) for r in rows]
        sent = {r["id"] for r in rows if r["sent_at"] is not None}
        parent_ts = message["parent_ts"]
        now = int(self._now())
        try:
            if parent_ts is None:
                kind = message["kind"]
                if kind == "single":
                    listed = alerts[:1]
                    text, blocks = fmt.single(alerts[0])
                elif kind == "group":
                    rest_in = "csv" if len(alerts) - fmt.RUNS_IN_PARENT > self.csv_threshold else "thread"
                    text, blocks, count = fmt.group(alerts, rest_in=rest_in)
                    listed = alerts[:count]
                else:
                    listed = []
                    text, blocks = fmt.summary(alerts)
                parent_ts = self.sink.post(channel, text, blocks)
                self.store.mark_posted(message["id"], [a.id for a in listed], now, parent_ts=parent_ts)
                result.posts += 1
                result.runs_delivered += len([a for a in listed if a.id not in sent])
                sent.update(a.id for a in listed)
            unsent = [a for a in alerts if a.id not in sent]
            if len(unsent) > self.csv_threshold and self._upload_csv(channel, message, parent_ts, unsent):
                self.store.mark_posted(message["id"], [a.id for a in unsent], now)
                result.posts += 1
                result.runs_delivered += len(unsent)
                unsent = []
            done = len(alerts) - len(unsent)
            while unsent:
                text, blocks, count = fmt.thread_reply(unsent, start=done, total=len(alerts))
                chunk, unsent = unsent[:count], unsent[count:]
                self.sink.post(channel, text, blocks, thread_ts=parent_ts)
                # Only the runs the reply lists are sent; the rest go in the next reply.
                self.store.mark_posted(message["id"], [a.id for a in chunk], now)
                result.posts += 1
                result.runs_delivered += len(chunk)
                done += len(chunk)
        except SlackError as exc:
            self.store.message_error(message["id"], str(exc))
            raise
        self.store.finish_message(message["id"])

    def _upload_csv(self, channel: str, message: dict[str, Any], parent_ts: str, alerts: list[Alert]) -> bool:
        """Share the runs as a CSV file in the thread; False when Slack refuses files for good
        (e.g. ``missing_scope``), so that they go as thread replies instead."""
        try:
            self.sink.upload(
                channel,
                parent_ts,
                f"wflogs-runs-{message['id']}.csv",
                fmt.runs_csv(alerts),
                f"{len(alerts):,} runs",
            )
        except SlackError as exc:
            if exc.error != "missing_scope" and _stops_channel(exc):
                raise
            text = (
                f"Slack refused a CSV file of runs ({exc.error}): add the files:write scope and "
                "reinstall the app (manifest.yml); meanwhile runs are listed as thread replies"
            )
            if self.store.tell_once(f"csv:{exc.error}", text, int(self._now())):
                log.error("%s", text)
            return False
        return True
