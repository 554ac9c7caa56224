"""The App Home: gathers, from stored state only (never Dify), what the Home tab shows one person,
and publishes it with ``views.publish`` (not a channel message, so not in the journal)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import home_format as hfmt
from bot import incident_format as ifmt
from bot.config import Settings
from storage import Store
from storage.incidents import IncidentStore

log = logging.getLogger(__name__)

DIGEST_LOOKBACK = 3 * 86400  # "yesterday" is the last digest of the last few days


def thread_link(workspace: str, channel: str, ts: str | None) -> str | None:
    """A link to a message in a channel (its thread), without asking Slack for each one."""
    if not ts or channel[:1] not in ("C", "G"):
        return None
    return f"{workspace.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"


class Home:
    """Builds and publishes the Home tab."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        store: Store,
        web: WebClient | None,
        *,
        names: Callable[[], dict[str, str]],
    ) -> None:
        self._settings = settings  # read on each use: workspace discovery replaces the settings
        self.store = store
        self.web = web
        self.names = names
        self._workspace: str | None = None

    @property
    def settings(self) -> Settings:
        return self._settings()

    def workspace(self) -> str:
        """The workspace's address for thread links (asked once per process; a fallback that
        Slack redirects otherwise)."""
        if self._workspace is None:
            url = None
            if self.web is not None:
                try:
                    url = self.web.auth_test().get("url")
                except Exception as exc:  # the view still works, with links Slack redirects
                    log.info("cannot read the workspace's address: %s", type(exc).__name__)
            self._workspace = str(url or "https://slack.com/")
        return self._workspace

    def state(self, now: int) -> hfmt.HomeState:
        """Everything the view shows, read from SQLite."""
        incidents = IncidentStore(self.store)
        names = self.names()
        mutes = incidents.active_mutes(now)
        mute_of = {int(m["incident_id"]): m for m in mutes if m.get("incident_id")}
        app_mutes = {m["app_id"]: m for m in mutes if not m.get("incident_id")}
        workspace = self.workspace()
        open_rows = incidents.open_incidents()
        private = {a.id for a in self.settings.apps if a.channels is not None}
        items = [
            hfmt.HomeIncident(
                incident=ifmt.Incident.from_row(row, mute_of.get(int(row["id"]))),
                channel=row["channel"],
                link=thread_link(workspace, row["channel"], row.get("parent_ts") or row.get("thread_ts")),
                private=row["app_id"] in private,
            )
            for row in open_rows
        ]
        open_by_app: dict[str, int] = {}
        for row in open_rows:
            open_by_app[row["app_id"]] = open_by_app.get(row["app_id"], 0) + 1
        states = {r["app_id"]: r for r in self.store.query("select * from app_state")}
        days: dict[str, list[dict[str, Any]]] = {}
        for row in self.store.query(
            "select app_id, runs, failed from digests where kind = 'scheduled' and window_end > ? "
            "and runs is not null order by app_id, window_end desc",
            [now - DIGEST_LOOKBACK],
        ):
            days.setdefault(row["app_id"], []).append(row)
        apps = []
        for app in self.settings.apps:
            st = states.get(app.id) or {}
            mute = app_mutes.get(app.id)
            figures = days.get(app.id, [])
            last = figures[0] if figures else {}
            before = figures[1] if len(figures) > 1 else {}
            apps.append(
                hfmt.HomeApp(
                    app_id=app.id,
                    name=names.get(app.id, app.label),
                    open_incidents=open_by_app.get(app.id, 0),
                    unreadable_since=st.get("failing_since"),
                    unreadable_error=st.get("last_error") if st.get("failing_since") else None,
                    muted_until=(mute or {}).get("until"),
                    mute_reason=(mute or {}).get("reason"),
                    yesterday_runs=last.get("runs"),
                    yesterday_failed=last.get("failed"),
                    before_runs=before.get("runs"),
                    before_failed=before.get("failed"),
                )
            )
        home_mutes = [
            hfmt.HomeMute(
                id=int(m["id"]),
                app_name=m.get("app_name") or "?",
                channel=m.get("channel") or "",
                until=m.get("until"),
                by_user=m.get("by_user"),
                reason=m.get("reason"),
                incident_id=m.get("incident_id"),
                incident_error=m.get("incident_error"),
                private=m.get("app_id") in private,
            )
            for m in mutes
        ]
        return hfmt.HomeState(
            now=now, apps=apps, incidents=items, mutes=home_mutes, controls=self.settings.interactive
        )

    def view(self, now: int, notes: list[str] | None = None) -> dict[str, Any]:
        state = self.state(now)
        state.notes.extend(notes or [])
        return hfmt.home_view(state, self.settings.tz)

    def publish(self, user: str, now: int, *, notes: list[str] | None = None) -> bool:
        """Publish the Home tab for ``user``; False when Slack refused it (logged)."""
        return self._publish(user, lambda: self.view(now, notes))

    def publish_refusal(self, user: str) -> bool:
        """A Home tab saying the person is not on allowed_users."""
        return self._publish(user, hfmt.refusal_view)

    def _publish(self, user: str, view: Callable[[], dict[str, Any]]) -> bool:
        if self.web is None:
            return False
        try:
            self.web.views_publish(user_id=user, view=view())
        except SlackApiError as exc:
            log.warning("Slack refused the Home tab: %s", exc.response.get("error"))
            return False
        except Exception:
            log.exception("publishing the Home tab failed")
            return False
        return True
