"""Delivery: turns the outbox into Slack messages, exactly once per run, one thread per incident.

Each pass first records what was sent but could not be recorded (the journal's memory; see
``bot/journal.py``), then lets the :class:`IncidentKeeper` count new runs into incidents
(app + status + error shape), end mutes and resolve quiet incidents. Then, channel by
channel, pending runs are planned into messages and the plan is stored: an incident's first
runs become its parent (one channel message, at most five a pass, the rest of a storm in one
summary); later runs become one reply in its thread. The incidents' thread events
(acknowledged, muted, resolved, escalated) and the features' planned messages (digests,
notices) follow. Only when every channel has had its new messages are changed parents
edited, a budget of them a pass, taking channels in turn: a busy channel's edits never hold
up another channel's first alert.

Every write goes through the :class:`Journal`: fenced by the lease, and recorded (the runs it
carried marked sent, the incident's message noted) in the transaction that marks it sent. A
crash can repeat at most the one write in flight; a Slack outage loses nothing: the rest waits.
The deliverer is the one writer of channel messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from bot import alert_format as fmt
from bot import incident_format as ifmt
from bot import watch_format as wfmt
from bot.errors import SlackError, SlackPermanentError
from bot.incidents import IncidentKeeper
from bot.journal import POST, UPDATE, UPLOAD, DeliveryPaused, Effect, Handler, Journal, LeaseLost
from bot.logs import Reminder
from bot.notifier import MESSAGE_SHAPE, PERMANENT, Sink
from bot.records import Alert
from storage import STORAGE_ERRORS, Store
from storage import journal as effects
from storage.incidents import IncidentStore

if TYPE_CHECKING:
    from bot.watch import Escalator, SignalMessages

log = logging.getLogger(__name__)

# At most this many top-level messages per channel from one plan; the rest of a
# storm goes into a single summary whose runs are listed in its thread.
MAX_MESSAGES_PER_PLAN = 5
# More unlisted runs than this go into a CSV file rather than thread replies.
CSV_THRESHOLD = 200
KEEP_SENT_SECONDS = 7 * 86400
# Parent edits per pass, all channels together, taken in turn (chat.update: about 50 a minute
# per workspace; a pass runs about every 15 seconds).
EDITS_PER_PASS = 12
# A problem that lasts (a channel Slack refuses, a bug) is logged once, then this often.
REMIND_EVERY = 600
# Resolved incidents are kept this long (the digest, "back again" links), then forgotten.
KEEP_INCIDENTS_SECONDS = 30 * 86400


@dataclass
class DeliveryResult:
    """What one delivery pass did."""

    runs_delivered: int = 0
    posts: int = 0
    edits: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    # Messages Slack refused on their own (the channel's others went out).
    refused: dict[str, str] = field(default_factory=dict)
    # Delivery waits: the database refuses writes, or another instance took the lease.
    paused: str | None = None

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
    """Drains the outbox into Slack through the :class:`Journal`, keeping each incident in one thread."""

    def __init__(
        self,
        *,
        store: Store,
        sink: Sink,
        now: Callable[[], float] = time.time,
        max_messages: int = MAX_MESSAGES_PER_PLAN,
        csv_threshold: int = CSV_THRESHOLD,
        channels: dict[str, str] | None = None,
        keeper: IncidentKeeper | None = None,
        controls: bool = False,
        mentions: dict[str, tuple[str, ...]] | None = None,
        signals: SignalMessages | None = None,
        escalator: Escalator | None = None,
        journal: Journal | None = None,
        edits_per_pass: int = EDITS_PER_PASS,
    ) -> None:
        self.store = store
        self.sink = sink
        self._now = now
        self.max_messages = max_messages
        self.csv_threshold = csv_threshold
        # Each app's current alert channel: alerts not yet in Slack follow a changed config.
        self.channels = dict(channels or {})
        self.keeper = keeper or IncidentKeeper(store)
        self.incidents = IncidentStore(store)
        # Acknowledge / Mute / Resolve are drawn only when Slack can send the clicks to wflogs.
        self.controls = controls
        # Who a new incident's channel message mentions, per app (never replies or edits).
        self.mentions = dict(mentions or {})
        # Failure-rate and stuck-runs incidents are drawn from their figures, not from runs.
        self.signals = signals
        # Escalations are due from the incidents' state, evaluated right after it is brought up to date.
        self.escalator = escalator
        self.journal = journal or Journal(store, sink, now=now)
        self.edits_per_pass = edits_per_pass
        # What planned effects record once sent, by the name they were planned with.
        self.handlers: dict[str, Handler] = {"digest": self._digest_sent}
        self._lock = threading.Lock()
        self._orphans: dict[str, list[int]] = {}  # this pass's replies whose thread was gone
        self._top_level: dict[str, int] = {}  # this pass's new channel messages, per channel
        self._remind = Reminder(REMIND_EVERY, now=now)

    def deliver_all(self) -> DeliveryResult:
        """Evaluate incidents, then deliver everything pending; a channel that fails keeps its work.

        Storage errors propagate (nothing more can be recorded this pass)."""
        with self._lock:  # one writer of channel messages at a time
            result = DeliveryResult()
            try:
                if not self.journal.flush():
                    result.paused = "the database refuses writes"
                    return result
                self._pass(result)
            except DeliveryPaused as exc:
                result.paused = str(exc)
            except LeaseLost as exc:
                result.paused = str(exc)
                log.warning("delivery stops: %s", exc)
            return result

    def deliver_planned(self) -> DeliveryResult:
        """Post only the features' planned messages (digests, notices), e.g. for ``wflogs digest``."""
        with self._lock:
            result = DeliveryResult()
            try:
                if not self.journal.flush():
                    result.paused = "the database refuses writes"
                    return result
                for channel in effects.waiting_channels(self.store):
                    self._guard(channel, result, partial(self._run_planned, channel, result))
            except (DeliveryPaused, LeaseLost) as exc:
                result.paused = str(exc)
            return result

    def _run_planned(self, channel: str, result: DeliveryResult) -> None:
        def refused(row: dict[str, Any], exc: SlackError) -> None:
            if row.get("op") == UPLOAD and (exc.error == "missing_scope" or not _stops_channel(exc)):
                # A file Slack will not take (no files:write, uploads disabled): the messages it goes
                # with went out; it is dropped rather than retried, and the operator told once.
                effects.refuse(self.store, row["key"], str(exc))
                text = (
                    f"Slack refused a file for {channel} ({exc.error}): the {row.get('source') or 'file'} "
                    "is left out and the messages go on without it; for files, add the files:write "
                    "scope and reinstall the app (manifest.yml)"
                )
                if self.store.tell_once(f"upload:{row.get('source')}:{exc.error}", text, int(self._now())):
                    log.error("%s", text)
                result.refused[channel] = str(exc)
                return
            if _stops_channel(exc):
                raise exc
            if self.store.tell_once(
                f"refused:{channel}:{row['key']}:{exc.error}", str(exc), int(self._now())
            ):
                log.error(
                    "Slack refused a %s for %s; the others go on (it is retried): %s",
                    row.get("source") or "message",
                    channel,
                    exc,
                )
            result.refused[channel] = str(exc)

        result.posts += self.journal.run_planned(channel, self.handlers, refused=refused)

    def _pass(self, result: DeliveryResult) -> None:
        now = int(self._now())
        if self.channels:
            moved = self.store.rebind_channels(self.channels)
            if moved:
                log.info("%d waiting alerts follow their app to its current channel", moved)
        self._evaluate(now)
        channels = set(self.incidents.channels_with_work()) | set(effects.waiting_channels(self.store))
        if self.signals is not None:
            channels |= set(self.signals.channels_with_work())
        self._orphans, self._top_level = {}, {}
        # New messages first, in every channel; only then edits (a budget of them, channels in turn).
        for channel in sorted(channels):
            self._guard(channel, result, partial(self.post_channel, channel, result))
        self._edit_all(sorted(channels), result)
        for channel, waiting in self._orphans.items():
            self._guard(channel, result, partial(self._retry_orphans, channel, waiting, result))
        self.store.prune_outbox(now - KEEP_SENT_SECONDS)
        self.incidents.prune(now - KEEP_INCIDENTS_SECONDS)
        effects.prune(self.store, now - KEEP_SENT_SECONDS)

    def _evaluate(self, now: int) -> None:
        for name, step in (("incidents", self.keeper.evaluate), ("escalations", self._escalate)):
            try:
                step(now)
            except STORAGE_ERRORS:
                raise
            except Exception:
                # Runs are safe in the outbox and what was planned before still goes out; the next
                # pass evaluates again. The traceback is logged once, then reminded.
                if self._remind.due(f"evaluate:{name}"):
                    log.exception("evaluating %s failed; every pass retries", name)

    def _escalate(self, now: int) -> None:
        if self.escalator is not None:
            self.escalator.evaluate(now)

    def _guard(self, channel: str, result: DeliveryResult, fn: Callable[[], None]) -> None:
        """Run one channel's step; a failure there keeps that channel's work and no other's."""
        if channel in result.errors:
            return
        try:
            fn()
        except (DeliveryPaused, LeaseLost):
            raise
        except SlackPermanentError as exc:
            result.errors[channel] = str(exc)
            if self._remind.due(f"channel:{channel}:{exc.error}"):
                log.error("alerts for %s are waiting: %s", channel, exc)
        except SlackError as exc:
            result.errors[channel] = str(exc)
            log.warning("alerts for %s are waiting: %s", channel, exc)
        except STORAGE_ERRORS:
            raise
        except Exception as exc:
            result.errors[channel] = f"unexpected error ({type(exc).__name__}); see the log"
            if self._remind.due(f"bug:{channel}:{type(exc).__name__}"):
                log.exception(
                    "delivering to %s failed unexpectedly; its alerts wait, other channels go on", channel
                )

    # -- planning ---------------------------------------------------------------------------

    def plan(self, channel: str) -> None:
        """Plan the channel's pending runs into messages and store the plan.

        Messages planned earlier that never reached Slack (an outage) are planned
        again together with the new runs, so a backlog is still at most
        ``max_messages`` channel messages and one reply per incident.
        """
        self.store.release_unposted(channel)
        rows = [r for r in self.store.unplanned_alerts(channel) if r["sent_at"] is None and r["incident_id"]]
        if not rows:
            return
        by_incident: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_incident.setdefault(int(row["incident_id"]), []).append(row)
        now = int(self._now())
        replies: list[tuple[int, list[dict[str, Any]]]] = []
        candidates: list[tuple[int, list[dict[str, Any]]]] = []
        threads: dict[int, str | None] = {}
        for incident_id, members in by_incident.items():
            incident = self.incidents.get(incident_id) or {}
            threads[incident_id] = incident.get("thread_ts")
            if incident.get("parent_ts"):
                replies.append((incident_id, members))
            else:
                candidates.append((incident_id, members))
        ranked = sorted(candidates, key=lambda c: len(c[1]), reverse=True)
        own, rest = ranked, []
        if len(ranked) > self.max_messages:
            own, rest = ranked[: self.max_messages - 1], ranked[self.max_messages - 1 :]
        for incident_id, members in sorted(own, key=lambda c: c[1][0]["id"]):
            kind = "single" if len(members) == 1 else "group"
            self.store.plan_message(channel, kind, [r["id"] for r in members], now, incident_id=incident_id)
        # Beyond the cap: shapes already in a storm summary's thread continue there; the others
        # share one new summary.
        summary = [c for c in rest if not threads[c[0]]]
        replies += [c for c in rest if threads[c[0]]]
        if summary:
            ids = sorted(r["id"] for _, members in summary for r in members)
            self.store.plan_message(channel, "summary", ids, now)
        for incident_id, members in sorted(replies, key=lambda c: c[1][0]["id"]):
            self.store.plan_message(
                channel, "reply", [r["id"] for r in members], now, incident_id=incident_id
            )

    # -- one channel's new messages --------------------------------------------------------

    def post_channel(self, channel: str, result: DeliveryResult) -> None:
        """Post the channel's planned messages (notices, digests), then plan and post every open
        message of ``channel`` in order, its new signal incidents and its incidents' thread events.

        An error that concerns the channel (membership, token, outage, rate limit)
        stops it: the rest waits. A refusal of one message is recorded (and told
        once) and the other messages still go out.
        """
        # Notices first: "can read X again; missed failures follow" comes before those failures.
        self._run_planned(channel, result)
        self.plan(channel)
        top_level = 0
        for message in self.store.open_messages(channel):
            if message["parent_ts"] is None and message["kind"] != "reply":
                if top_level >= self.max_messages:
                    continue  # never more than max_messages new channel messages a pass
                top_level += 1
            self._refusable(channel, message, result, partial(self._deliver, channel, message, result))
        if self.signals is not None:
            top_level += self._deliver_signals(channel, result, room=self.max_messages - top_level)
        self._top_level[channel] = top_level
        for event in self.incidents.pending_events(channel):
            self._refusable(channel, event, result, partial(self._tell, channel, event, result))

    def _retry_orphans(self, channel: str, waiting: list[int], result: DeliveryResult) -> None:
        """Replies whose thread was gone: their incident got a new parent since; try once more."""
        for message in self.store.open_messages(channel):
            if message["id"] in waiting:
                self._refusable(channel, message, result, partial(self._deliver, channel, message, result))

    def _refusable(
        self, channel: str, item: dict[str, Any], result: DeliveryResult, fn: Callable[[], None]
    ) -> None:
        try:
            fn()
        except SlackError as exc:
            if _stops_channel(exc):
                raise
            if "kind" in item:
                self.store.message_error(item["id"], str(exc))
                # A message planned again after a refusal is a new row: name it by its first run.
                first = min((r["id"] for r in self.store.message_alerts(item["id"])), default=item["id"])
                key = f"refused:{channel}:run {first}:{exc.error}"
            else:
                key = f"refused:{channel}:event {item['id']}:{exc.error}"
            if self.store.tell_once(key, str(exc), int(self._now())):
                log.error(
                    "Slack refused a message for %s; the others go on (it is retried): %s", channel, exc
                )
            result.refused[channel] = str(exc)

    def _deliver(self, channel: str, message: dict[str, Any], result: DeliveryResult) -> None:
        rows = self.store.message_alerts(message["id"])
        alerts = [Alert.from_row(r) for r in rows]
        sent = {r["id"] for r in rows if r["sent_at"] is not None}
        parent_ts = message["parent_ts"]
        incident_id = message.get("incident_id")
        if incident_id is None and message["kind"] in ("single", "group") and rows:
            incident_id = rows[0].get("incident_id")  # planned before incidents existed
        incident = self.incidents.get(int(incident_id)) if incident_id else None
        now = int(self._now())
        # Numbering of replies: within the incident when there is one, else within the message.
        base, total = 0, len(alerts)
        try:
            if message["kind"] == "reply":
                if incident is None or not incident.get("thread_ts"):
                    return  # its thread is not in Slack yet; it waits
                parent_ts = incident["thread_ts"]
                shown = int(incident["runs"]) - int(incident["muted_runs"] or 0)
                base = max(0, shown - self.incidents.unsent_count(int(incident["id"])))
                total = shown
            elif parent_ts is None:
                parent_ts = self._post_parent(channel, message, alerts, incident, sent, result)
            elif incident is not None and incident.get("thread_ts"):
                parent_ts = incident["thread_ts"]  # a parent deleted and posted anew since
            unsent = [a for a in alerts if a.id not in sent]
            if len(unsent) > self.csv_threshold and self._upload_csv(channel, message, parent_ts, unsent):
                result.posts += 1
                result.runs_delivered += len(unsent)
                unsent = []
            done = base + len(alerts) - len(unsent) if message["kind"] != "reply" else base
            while unsent:
                text, blocks, count = fmt.thread_reply(
                    unsent, start=done, total=max(total, done + len(unsent))
                )
                chunk, unsent = unsent[:count], unsent[count:]
                # Only the runs the reply lists are sent; the rest go in the next reply.
                self.journal.send(
                    Effect(
                        key=f"reply:{message['id']}:{chunk[0].id}",
                        op=POST,
                        channel=channel,
                        text=text,
                        blocks=blocks,
                        thread_ts=parent_ts,
                        source="runs",
                    ),
                    partial(self._runs_sent, message["id"], [a.id for a in chunk], now),
                )
                result.posts += 1
                result.runs_delivered += len(chunk)
                done += len(chunk)
        except SlackError as exc:
            self.store.message_error(message["id"], str(exc))
            if exc.error == "thread_not_found" and incident is not None and parent_ts:
                # The thread's first message was deleted before any reply: not a refusal of these
                # runs; the incident gets a new parent (or its own) and they follow there.
                self.incidents.thread_lost(int(incident["id"]), parent_ts)
                self._orphans.setdefault(channel, []).append(int(message["id"]))
                log.info("the thread of incident %s is gone in Slack; its runs move on", incident["id"])
                return
            raise
        self.store.finish_message(message["id"])

    def _runs_sent(self, message_id: int, alert_ids: list[int], now: int, _ts: str | None) -> None:
        self.store.mark_posted(message_id, alert_ids, now)

    def _post_parent(
        self,
        channel: str,
        message: dict[str, Any],
        alerts: list[Alert],
        incident: dict[str, Any] | None,
        sent: set[int],
        result: DeliveryResult,
    ) -> str:
        """Post the message's channel message: an incident's parent or a storm summary."""
        now = int(self._now())
        rest_in = "csv" if len(alerts) - fmt.RUNS_IN_PARENT > self.csv_threshold else "thread"
        body = None
        if incident is not None:
            incident = self._with_previous_link(incident)
            view = ifmt.Incident.from_row(incident, self._mute(incident, now))
            text, blocks, count, body = ifmt.parent(
                view, alerts, with_controls=self.controls, now=now, rest_in=rest_in
            )
            listed = alerts[:count]
            text, blocks = wfmt.with_mentions(text, blocks, self._mentions(incident["app_id"], channel))
        else:
            listed = []
            text, blocks = fmt.summary(alerts)
            apps = dict.fromkeys(r["app_id"] for r in self.store.message_alerts(message["id"]))
            called = dict.fromkeys(m for app_id in apps for m in self._mentions(app_id, channel))
            text, blocks = wfmt.with_mentions(text, blocks, list(called))

        def record(ts: str | None) -> None:
            assert ts is not None
            self.store.mark_posted(message["id"], [a.id for a in listed], now, parent_ts=ts)
            if incident is not None and body is not None:
                self.incidents.set_parent(
                    int(incident["id"]), ts, body, shown=int(incident.get("dirty") or 0)
                )
            else:
                ids = sorted({int(r["incident_id"]) for r in self.store.message_alerts(message["id"])})
                self.incidents.set_thread(ids, ts)

        source = "incident" if incident is not None else "summary"
        ts = self.journal.send(
            Effect(
                key=f"parent:{message['id']}",
                op=POST,
                channel=channel,
                text=text,
                blocks=blocks,
                source=source,
            ),
            record,
        )
        assert ts is not None
        result.posts += 1
        result.runs_delivered += len([a for a in listed if a.id not in sent])
        sent.update(a.id for a in listed)
        return ts

    def _mentions(self, app_id: str, channel: str) -> tuple[str, ...]:
        """Who a new message of ``app_id`` in ``channel`` mentions: only in the app's configured
        channel; a channel subscribed from Slack gets the incident without paging anyone twice."""
        configured = self.channels.get(app_id)
        if configured is not None and configured != channel:
            return ()
        return self.mentions.get(app_id, ())

    def _with_previous_link(self, incident: dict[str, Any]) -> dict[str, Any]:
        """For an incident that is back: when the previous one resolved, and a link to its thread (best
        effort: without one the message still says the error is back)."""
        if not incident.get("previous_id"):
            return incident
        previous = self.incidents.get(int(incident["previous_id"]))
        if previous:
            incident = {**incident, "previous_at": previous.get("resolved_at") or previous.get("opened_at")}
        if incident.get("previous_link"):
            return incident
        if not previous or not (previous.get("parent_ts") or previous.get("thread_ts")):
            return incident
        try:
            link = self.sink.permalink(
                previous["channel"], previous.get("parent_ts") or previous["thread_ts"]
            )
        except SlackError as exc:
            log.info("no link to the previous incident: %s", exc)
            link = None
        if link:
            self.incidents.set_previous_link(int(incident["id"]), link)
            incident = {**incident, "previous_link": link}
        return incident

    def _previous_at(self, incident: dict[str, Any]) -> dict[str, Any]:
        """The incident with when its previous one (if it is back) resolved, for the "back" line."""
        if not incident.get("previous_id"):
            return incident
        previous = self.incidents.get(int(incident["previous_id"])) or {}
        return {**incident, "previous_at": previous.get("resolved_at") or previous.get("opened_at")}

    def _mute(self, incident: dict[str, Any], now: int) -> dict[str, Any] | None:
        mute = self.incidents.mute_for(incident["app_id"], int(incident["id"]), now)
        return mute

    def _tell(self, channel: str, event: dict[str, Any], result: DeliveryResult) -> None:
        """Post an incident event in its thread (or a channel notice)."""
        if event.get("incident_id") and not event.get("thread_ts"):
            incident = self.incidents.get(int(event["incident_id"]))
            if (
                incident
                and int(incident["runs"]) == int(incident["muted_runs"] or 0)
                and incident["state"] != "open"
            ):
                # Nothing of it ever reached Slack (all muted): nothing to tell either.
                self.incidents.event_posted(int(event["id"]), int(self._now()))
            return  # its thread is not in Slack yet
        text, blocks = ifmt.event(event["text"])
        thread = event.get("thread_ts") if event.get("incident_id") else None
        try:
            self.journal.send(
                Effect(
                    key=f"event:{event['id']}",
                    op=POST,
                    channel=channel,
                    text=text,
                    blocks=blocks,
                    thread_ts=thread,
                    broadcast=bool(event.get("broadcast")),
                    source="escalation" if event.get("broadcast") else "event",
                ),
                lambda _ts: self.incidents.event_posted(int(event["id"]), int(self._now())),
            )
        except SlackError as exc:
            if exc.error == "thread_not_found" and thread:
                # Its message was deleted before any reply: the incident gets a new one, then this.
                self.incidents.thread_lost(int(event["incident_id"]), thread)
                return
            raise
        result.posts += 1

    # -- edits -------------------------------------------------------------------------------

    def _edit_all(self, channels: list[str], result: DeliveryResult) -> None:
        """Edit changed parents: at most ``edits_per_pass`` in all, one channel after another in
        turn, oldest incident first in each; the rest wait for the next pass."""
        queues = {c: deque(self.incidents.dirty(c)) for c in channels if c not in result.errors}
        budget = self.edits_per_pass
        while budget > 0:
            turn = [c for c, queue in queues.items() if queue and c not in result.errors]
            if not turn:
                return
            for channel in turn:
                if budget <= 0:
                    return
                incident = queues[channel].popleft()
                self._guard(channel, result, partial(self._edit_counted, channel, incident, result))
                budget -= 1

    def _edit_counted(self, channel: str, incident: dict[str, Any], result: DeliveryResult) -> None:
        may_post = self._top_level.get(channel, 0) < self.max_messages
        posted = self._edit(channel, incident, result, may_post=may_post)
        self._top_level[channel] = self._top_level.get(channel, 0) + posted

    def _edit(self, channel: str, incident: dict[str, Any], result: DeliveryResult, *, may_post: bool) -> int:
        """Edit a parent to show the incident's state; a deleted parent gets a new one.

        Returns how many channel messages were posted (0 or 1)."""
        now = int(self._now())
        if self.signals is not None and self.signals.shows_signal(incident):
            text, blocks = self.signals.render(incident, controls=self.controls, now=now)
        else:
            view = ifmt.Incident.from_row(self._previous_at(incident), self._mute(incident, now))
            text, blocks = ifmt.edit(view, incident.get("parent_body"), with_controls=self.controls, now=now)
        incident_id = int(incident["id"])
        shown = int(incident["dirty"] or 0)
        try:
            self.journal.send(
                Effect(
                    key=f"edit:{incident_id}:{int(incident.get('edits') or 0)}",
                    op=UPDATE,
                    channel=channel,
                    text=text,
                    blocks=blocks,
                    ts=incident["parent_ts"],
                    source="edit",
                ),
                lambda _ts: self.incidents.edited(incident_id, shown),
            )
        except SlackError as exc:
            if exc.error == "message_not_found":
                if not may_post:
                    return 0
                # Deleted in Slack: a new parent (keeping the runs the old one listed) and a new thread.
                body = incident.get("parent_body") or "[]"
                self.journal.send(
                    Effect(
                        key=f"repost:{incident_id}:{incident['parent_ts']}",
                        op=POST,
                        channel=channel,
                        text=text,
                        blocks=blocks,
                        source="incident",
                    ),
                    lambda ts: self.incidents.set_parent(incident_id, str(ts), body, shown=shown),
                )
                log.info("the message of incident %s was deleted in Slack; posted a new one", incident_id)
                result.posts += 1
                return 1
            if exc.error in {"cant_update_message", "edit_window_closed"} | MESSAGE_SHAPE:
                log.warning("cannot edit the message of incident %s any more: %s", incident_id, exc.error)
                self.incidents.stop_editing(incident_id)
                return 0
            if _stops_channel(exc):
                raise
            log.warning("editing the message of incident %s failed; will retry: %s", incident_id, exc)
            return 0
        result.edits += 1
        return 0

    # -- signals, files, planned messages ------------------------------------------------------

    def _deliver_signals(self, channel: str, result: DeliveryResult, *, room: int) -> int:
        """Failure-rate and stuck-runs incidents: new parents (at most ``room``, with the mention
        list), then a thread reply for runs that got stuck since. Returns channel messages posted."""
        assert self.signals is not None
        signals = self.signals
        now = int(self._now())
        posted = 0
        for incident in signals.unposted(channel):
            if posted >= room:
                break

            def post_parent(incident: dict[str, Any] = incident) -> None:
                text, blocks = signals.render(incident, controls=self.controls, now=now, first=True)
                self.journal.send(
                    Effect(
                        key=f"signal:{incident['id']}",
                        op=POST,
                        channel=channel,
                        text=text,
                        blocks=blocks,
                        source="incident",
                    ),
                    lambda ts: signals.posted(incident, str(ts)),
                )
                result.posts += 1

            self._refusable(channel, {"id": incident["id"]}, result, post_parent)
            posted += 1
        for incident, runs in signals.news(channel, now):

            def post_news(incident: dict[str, Any] = incident, runs: list[dict[str, Any]] = runs) -> None:
                if signals.muted(incident, now):  # muted: counted on the parent only
                    signals.told(incident, runs)
                    return
                text, blocks = wfmt.stuck_more(runs, now)
                self.journal.send(
                    Effect(
                        key=f"stuck:{incident['id']}:{runs[0]['log_id']}",
                        op=POST,
                        channel=channel,
                        text=text,
                        blocks=blocks,
                        thread_ts=incident["thread_ts"],
                        source="runs",
                    ),
                    lambda _ts: signals.told(incident, runs),
                )
                result.posts += 1

            self._refusable(channel, {"id": incident["id"]}, result, post_news)
        return posted

    def _upload_csv(self, channel: str, message: dict[str, Any], parent_ts: str, alerts: list[Alert]) -> bool:
        """Share the runs as a CSV file in the thread; False when Slack refuses files for good
        (e.g. ``missing_scope``), so that they go as thread replies instead."""
        now = int(self._now())
        try:
            self.journal.send(
                Effect(
                    key=f"csv:{message['id']}:{alerts[0].id}",
                    op=UPLOAD,
                    channel=channel,
                    thread_ts=parent_ts,
                    filename=f"wflogs-runs-{message['id']}.csv",
                    content=fmt.runs_csv(alerts),
                    comment=f"{len(alerts):,} runs",
                    source="runs",
                ),
                partial(self._runs_sent, message["id"], [a.id for a in alerts], now),
            )
        except SlackError as exc:
            if exc.error != "missing_scope" and _stops_channel(exc):
                raise
            text = (
                f"Slack refused a CSV file of runs ({exc.error}): add the files:write scope and "
                "reinstall the app (manifest.yml); meanwhile runs are listed as thread replies"
            )
            if self.store.tell_once(f"csv:{exc.error}", text, now):
                log.error("%s", text)
            return False
        return True

    def _digest_sent(self, ts: str | None, args: dict[str, Any]) -> None:
        """A planned digest reached Slack: remember its message."""
        self.store.digest_sent(int(args["digest_id"]), ts, int(self._now()))
