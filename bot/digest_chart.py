"""The digest's chart: per app, failed and stopped runs per day over the last 14 days, as a PNG.

The figures are the digests' own counts (``digests.runs``, ``failed``, ``stopped``): the
chart costs no Dify request. A day's scheduled digest is its figure; without one, its latest
``wflogs digest --now`` (an install that runs the digest from cron). One bar group per day,
labelled with the local day its 24-hour window mostly covers; the digest's own window is the
last one, marked (``yesterday`` for a scheduled digest, ``last 24 h`` for ``wflogs digest
--now``). A day without a digest (wflogs was down, Dify could not be read) is hatched and said so.

matplotlib (Agg, no display) is imported only inside :func:`draw`: the poller, the CLI and
``wflogs run`` do not load it until a digest with a chart is planned. Everything else here is
pure and cheap (the alt text, the title).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.text import one_line, strip_controls, truncate

DAYS = 14
# At most this many apps in one image (a phone scrolls; the alt text names the rest).
MAX_PANELS = 12
WIDTH_PX = 1200
DPI = 100
# Okabe & Ito's colour-blind-safe palette: vermillion, orange, blue; grey for the marked day.
FAILED_COLOUR = "#D55E00"
STOPPED_COLOUR = "#E69F00"
RATE_COLOUR = "#0072B2"
MARK_COLOUR = "#E8E8E8"
GAP_COLOUR = "#AAAAAA"
# Slack refuses longer alt text (alt_txt_too_large).
ALT_LIMIT = 1000
COMMENT = "Failed and stopped runs per day, last 14 days"


@dataclass(frozen=True)
class Day:
    """One day of one app: its digest's counts, or None without a digest that day."""

    day: date
    runs: int | None = None
    failed: int | None = None
    stopped: int | None = None

    @property
    def known(self) -> bool:
        return self.runs is not None and self.failed is not None

    @property
    def rate(self) -> float | None:
        """Failed runs per 100 runs (as the digest's failure rate), None without runs."""
        if not self.known or not self.runs:
            return None
        return 100.0 * (self.failed or 0) / self.runs


@dataclass(frozen=True)
class Panel:
    """One app's 14 days, oldest first; the last is its digest's own window."""

    app_name: str
    days: list[Day]


@dataclass
class Chart:
    """What one chart shows: the apps of one digest channel, in the digest's order."""

    panels: list[Panel] = field(default_factory=list)
    manual: bool = False

    @property
    def last_label(self) -> str:
        return "last 24 h" if self.manual else "yesterday"

    @property
    def shown(self) -> list[Panel]:
        return self.panels[:MAX_PANELS]


def day_of(window_end: int, tz: ZoneInfo) -> date:
    """The local day a 24-hour window ending at ``window_end`` mostly covers (its middle's date)."""
    return datetime.fromtimestamp(window_end - 43_200, tz).date()


def panel(app_name: str, last: Day, history: list[dict[str, Any]], tz: ZoneInfo) -> Panel:
    """An app's panel: ``last`` (the digest being planned) and the stored digests before it."""
    by_day: dict[date, Day] = {}
    scheduled: set[date] = set()
    for row in history:  # oldest first: a day's scheduled digest wins, else its latest --now one
        day = day_of(int(row["window_end"]), tz)
        if day in scheduled:
            continue
        if row.get("kind") == "scheduled":
            scheduled.add(day)
        by_day[day] = Day(day, row.get("runs"), row.get("failed"), row.get("stopped"))
    days = [
        by_day.get(last.day - timedelta(days=n), Day(last.day - timedelta(days=n)))
        for n in range(DAYS - 1, 0, -1)
    ]
    return Panel(strip_controls(one_line(app_name)), [*days, last])


def _day(d: date) -> str:
    return f"{d.day} {d.strftime('%b')}"


def _counts(day: Day) -> str:
    if not day.known:
        return "no digest"
    rate = day.rate
    text = f"{day.failed:,} failed"
    if day.stopped is not None:
        text += f", {day.stopped:,} stopped"
    text += f" of {day.runs:,} runs"
    return text + (f" ({rate:.1f}% failed)" if rate is not None else "")


def title(chart: Chart) -> str:
    """The file's title in Slack (plain text)."""
    last = chart.panels[0].days[-1].day if chart.panels else None
    when = f" to {_day(last)}" if last else ""
    return f"Failed and stopped runs per day, {DAYS} days{when}"


def alt_text(chart: Chart) -> str:
    """The chart in words, for screen readers (Slack's alt text, at most 1000 characters)."""
    if not chart.panels:
        return "No apps."
    days = chart.panels[0].days
    parts = [
        f"Bar chart of failed and stopped runs per day, {_day(days[0].day)} to {_day(days[-1].day)}, "
        f"one panel per app, with the failure rate as a line; {chart.last_label} is marked."
    ]
    for item in chart.panels:
        last = item.days[-1]
        known = [d for d in item.days if d.known]
        failed = sum(d.failed or 0 for d in known)
        stopped = sum(d.stopped or 0 for d in known)
        sentence = f"{item.app_name}: {chart.last_label} {_counts(last)}; {DAYS} days: {failed:,} failed"
        sentence += f", {stopped:,} stopped"
        worst = max(known, key=lambda d: (d.failed or 0, d.day), default=None)
        if worst is not None and worst.failed:
            sentence += f", most failures on {_day(worst.day)} ({worst.failed:,})"
        missing = DAYS - len(known)
        if missing:
            sentence += f"; no digest on {missing} day{'s' if missing != 1 else ''}"
        parts.append(sentence + ".")
    if len(chart.panels) > MAX_PANELS:
        parts.append(f"The image shows the first {MAX_PANELS} apps.")
    return truncate(" ".join(parts), ALT_LIMIT)


def filename(chart: Chart, key: str) -> str:
    last = chart.panels[0].days[-1].day.isoformat() if chart.panels else "chart"
    return f"wflogs-digest-{last}-{key.replace(':', '-')}.png"


def draw(chart: Chart) -> bytes:
    """The PNG: one panel per app (at most :data:`MAX_PANELS`), ``WIDTH_PX`` wide."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from PIL import Image

    panels = chart.shown
    rows = max(len(panels), 1)
    height = 1.1 + 3.0 * rows
    fig = Figure(figsize=(WIDTH_PX / DPI, height), dpi=DPI)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax, item in zip(axes, panels, strict=False):
        _panel(ax, item, chart)
    handles = [
        Patch(color=FAILED_COLOUR, label="failed"),
        Patch(color=STOPPED_COLOUR, label="stopped"),
        Line2D([], [], color=RATE_COLOUR, marker="o", linewidth=2.5, label="% failed"),
        Patch(color=MARK_COLOUR, label=chart.last_label),
    ]
    if any(not d.known for p in panels for d in p.days):
        handles.append(Patch(facecolor="none", edgecolor=GAP_COLOUR, hatch="//", label="no digest"))
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=len(handles),
        fontsize=16,
        frameon=False,
        handlelength=1.5,
        columnspacing=1.2,
    )
    fig.subplots_adjust(left=0.08, right=0.92, top=1 - 1.45 / height, bottom=0.5 / height, hspace=0.85)
    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the font (emoji in an app's name)
        canvas.draw()
    # A few flat colours and grey text: a 64-colour palette keeps it sharp at a third of the bytes.
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=64, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _panel(ax: Any, item: Panel, chart: Chart) -> None:
    xs = list(range(len(item.days)))
    failed = [d.failed or 0 for d in item.days]
    stopped = [d.stopped or 0 for d in item.days]
    ax.axvspan(xs[-1] - 0.5, xs[-1] + 0.5, color=MARK_COLOUR, zorder=0)
    ax.bar(xs, failed, width=0.7, color=FAILED_COLOUR, zorder=2)
    ax.bar(xs, stopped, width=0.7, bottom=failed, color=STOPPED_COLOUR, zorder=2)
    top = max([f + s for f, s in zip(failed, stopped, strict=True)] + [1])
    gaps = [x for x, day in zip(xs, item.days, strict=True) if not day.known]
    if gaps:
        ax.bar(
            gaps,
            [top * 1.15] * len(gaps),
            width=0.7,
            color="none",
            edgecolor=GAP_COLOUR,
            hatch="//",
            linewidth=0,
            zorder=1,
        )
    ax.set_ylim(0, top * 1.15)
    ax.yaxis.get_major_locator().set_params(integer=True, nbins=4)
    labels = []
    for n, day in enumerate(item.days):
        label = str(day.day.day)
        if n == 0 or day.day.day == 1:
            label = _day(day.day)
        labels.append(label)
    ax.set_xticks(xs, labels, fontsize=14)
    ax.get_xticklabels()[-1].set_fontweight("bold")
    ax.tick_params(axis="y", labelsize=14)
    ax.set_xlim(-0.6, xs[-1] + 0.6)
    ax.spines[["top"]].set_visible(False)
    ax.set_ylabel("runs", fontsize=14)
    last = item.days[-1]
    ax.set_title(
        truncate(item.app_name, 60), loc="left", fontsize=18, fontweight="bold", parse_math=False, pad=30
    )
    ax.text(
        0,
        1.04,
        f"{chart.last_label}: {_counts(last)}",
        transform=ax.transAxes,
        fontsize=15,
        ha="left",
        va="bottom",
        parse_math=False,
    )
    rates = [d.rate for d in item.days]
    rate_ax = ax.twinx()
    # A day without runs or without a digest breaks the line rather than bridging it.
    rate_ax.plot(
        xs,
        [math.nan if r is None else r for r in rates],
        color=RATE_COLOUR,
        marker="o",
        linewidth=2.5,
        markersize=6,
        zorder=3,
    )
    high = max([r for r in rates if r is not None] + [1.0])
    rate_ax.set_ylim(0, min(100.0, high * 1.25) if high < 80 else 105)
    rate_ax.yaxis.get_major_locator().set_params(nbins=4)
    rate_ax.tick_params(axis="y", labelsize=14, colors=RATE_COLOUR)
    digits = 0 if high >= 4 else 1
    rate_ax.yaxis.set_major_formatter(lambda value, _pos: f"{value:.{digits}f}%")
    rate_ax.spines[["top"]].set_visible(False)
