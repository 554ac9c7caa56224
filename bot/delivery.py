"""Delivery: turns the outbox into Slack messages, exactly once per run.

Pending alerts of a channel are planned into messages first (one per run, one
per group of runs sharing app, status and error shape, and one summary when a
storm has many shapes), and the plan is stored. Then each message is posted and
the runs it carries are marked sent in the same step, so a crash can repeat at
most the one post in flight and a Slack outage loses nothing: the rest waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot import alert_format as fmt
from bot.errors import SlackError, SlackPermanentError
from bot.notifier import Sink
from bot.records import Alert
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

    @property
    def ok(self) -> bool:
        return not self.errors


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
    ) -> None:
        self.store = store
        self.sink = sink
        self._now = now
        self.max_messages = max_messages
        self.csv_threshold = csv_threshold

    def deliver_all(self) -> DeliveryResult:
        """Deliver every pending alert; a channel that fails keeps its alerts for later."""
        result = DeliveryResult()
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
        """Group the channel's unplanned alerts into messages and store the plan."""
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
        """Plan, then post every open message of ``channel`` in order."""
        self.plan(channel)
        for message in self.store.open_messages(channel):
            self._deliver(channel, message, result)

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
                    listed = alerts[: fmt.RUNS_IN_PARENT]
                    rest_in = "csv" if len(alerts) - len(listed) > self.csv_threshold else "thread"
                    text, blocks = fmt.group(alerts, rest_in=rest_in)
                else:
                    listed = []
                    text, blocks = fmt.summary(alerts)
                parent_ts = self.sink.post(channel, text, blocks)
                self.store.mark_posted(message["id"], [a.id for a in listed], now, parent_ts=parent_ts)
                result.posts += 1
                result.runs_delivered += len([a for a in listed if a.id not in sent])
                sent.update(a.id for a in listed)
            unsent = [a for a in alerts if a.id not in sent]
            if len(unsent) > self.csv_threshold:
                self.sink.upload(
                    channel,
                    parent_ts,
                    f"wflogs-runs-{message['id']}.csv",
                    fmt.runs_csv(unsent),
                    f"{len(unsent):,} runs",
                )
                self.store.mark_posted(message["id"], [a.id for a in unsent], now)
                result.posts += 1
                result.runs_delivered += len(unsent)
            else:
                start = len(alerts) - len(unsent)
                for offset in range(0, len(unsent), fmt.RUNS_PER_REPLY):
                    chunk = unsent[offset : offset + fmt.RUNS_PER_REPLY]
                    text, blocks = fmt.thread_reply(chunk, start=start + offset, total=len(alerts))
                    self.sink.post(channel, text, blocks, thread_ts=parent_ts)
                    self.store.mark_posted(message["id"], [a.id for a in chunk], now)
                    result.posts += 1
                    result.runs_delivered += len(chunk)
        except SlackError as exc:
            self.store.message_error(message["id"], str(exc))
            raise
        self.store.finish_message(message["id"])
