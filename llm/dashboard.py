"""The admin's usage dashboard: filters, figures and server-rendered SVG charts from llm.usage (no script, no CDN)."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from llm.models import Consumer, UsageHour
from llm.usage import Tally, usage

WIDTH, HEIGHT, LEFT, BOTTOM = 720, 140, 52, 18
DAYS = 30
ALL_MODELS = "__all__"


def context(query) -> dict:
    """Everything the dashboard template shows, for the GET parameters `consumer` (an id) and `model`."""
    consumers = {c.pk: c.name for c in Consumer.objects.order_by("name")}
    consumer_id = _int(query.get("consumer"))
    if consumer_id not in consumers:
        consumer_id = None
    # "" is a model too: the rows of requests refused before one was chosen.
    model = query.get("model", ALL_MODELS)
    model = None if model == ALL_MODELS else model
    now = timezone.now()
    shown = usage(now=now, consumer_id=consumer_id, model=model, days=DAYS)
    models = sorted(set(UsageHour.objects.filter(hour__gte=shown.days[0][0]).values_list("model", flat=True).distinct())
                    | {name for name, _ in shown.models} | ({model} if model is not None else set()))

    def list_url(*, consumer=consumer_id, model_name=model, since: datetime, until: datetime | None = None) -> str:
        params = {"created_at__gte": since.isoformat()}
        if until is not None:
            params["created_at__lt"] = until.isoformat()
        if consumer is not None:
            params["consumer__id__exact"] = consumer
        elif consumer is False:
            params["consumer__isnull"] = "True"
        if model_name is not None:
            params["model"] = model_name
        return f"{reverse('admin:llm_generation_changelist')}?{urlencode(params)}"

    first_day = shown.days[0][0]
    hours_label = lambda start: start.strftime("%H:00")  # noqa: E731
    days_label = lambda start: start.strftime("%b %d")  # noqa: E731
    return {
        "consumers": consumers,
        "models": models,
        "selected_consumer": consumer_id,
        "selected_model": model,
        "live_since": shown.live_since,
        "missing": shown.missing,
        "totals": [("Last 24 hours", shown.total_24h, list_url(since=shown.hours[0][0])),
                   ("Last 30 days", shown.total_30d, list_url(since=first_day))],
        "charts": [
            ("Last 24 hours, by hour", _charts(shown.hours, hours_label, timedelta(hours=1), list_url)),
            (f"Last {DAYS} days, by day", _charts(shown.days, days_label, timedelta(days=1), list_url)),
        ],
        "top_consumers": [(consumers.get(cid, "(no consumer)" if cid is None else f"deleted consumer #{cid}"),
                           tally, list_url(consumer=cid if cid is not None else False, since=first_day))
                          for cid, tally in shown.consumers[:10]],
        "top_models": [(name or "(none)", tally, list_url(model_name=name, since=first_day))
                       for name, tally in shown.models[:10]],
    }


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _charts(series: list[tuple[datetime, Tally]], label, step: timedelta, list_url) -> list[tuple[str, SafeString]]:
    labels = [label(start) for start, _ in series]
    links = [list_url(since=start, until=start + step) for start, _ in series]
    return [
        ("Requests (errors in red)", bar_chart(labels, [t.requests for _, t in series], links,
                                               overlay=[t.errors for _, t in series], unit="requests",
                                               name="requests")),
        ("Error rate", bar_chart(labels, [round(100 * t.error_rate, 1) if t.error_rate is not None else 0
                                          for _, t in series], links, unit="%", name="error-rate", color="#ba2121")),
        ("Latency p50 and p95 (ms)", line_chart(labels, {"p50": [t.p50 for _, t in series],
                                                         "p95": [t.p95 for _, t in series]}, name="latency")),
        ("Tokens (prompt + completion)", bar_chart(labels, [t.tokens for _, t in series], links, unit="tokens",
                                                   name="tokens", color="#417690")),
    ]


def _frame(name: str, top: float, labels: list[str], body: SafeString) -> SafeString:
    axis = format_html(
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>'
        '<text x="{}" y="12" text-anchor="end" font-size="11">{}</text>'
        '<text x="{}" y="{}" text-anchor="end" font-size="11">0</text>'
        '<text x="{}" y="{}" font-size="11">{}</text>'
        '<text x="{}" y="{}" text-anchor="end" font-size="11">{}</text>',
        LEFT, HEIGHT - BOTTOM, WIDTH, HEIGHT - BOTTOM, LEFT - 4, _short(top), LEFT - 4, HEIGHT - BOTTOM,
        LEFT, HEIGHT - 4, labels[0] if labels else "", WIDTH, HEIGHT - 4, labels[-1] if labels else "")
    # Sized by attributes and llm/admin.css, not a style attribute (the Content-Security-Policy refuses those).
    return format_html('<svg class="usage-chart" data-chart="{}" viewBox="0 0 {} {}" width="100%" height="{}" '
                       'role="img" preserveAspectRatio="none">{}{}</svg>',
                       name, WIDTH, HEIGHT, HEIGHT, axis, body)


def bar_chart(labels: list[str], values: list[float], links: list[str], *, unit: str, name: str,
              overlay: list[float] | None = None, color: str = "#79aec8") -> SafeString:
    """One bar per period, each linking to that period's generations, with its exact value on hover."""
    top = max(values, default=0) or 1
    slot = (WIDTH - LEFT) / max(len(values), 1)
    plot = HEIGHT - BOTTOM - 16

    def bar(index, value, fill, css):
        h = plot * value / top
        return format_html('<rect class="{}" data-value="{}" x="{}" y="{}" width="{}" height="{}" '
                           'fill="{}"><title>{}: {} {}</title></rect>',
                           css, value, _px(LEFT + index * slot + 1), _px(HEIGHT - BOTTOM - h), _px(max(slot - 2, 1)),
                           _px(h), fill, labels[index], _number(value), unit)

    bars = format_html_join("", '<a href="{}">{}{}</a>', (
        (links[i], bar(i, value, color, "bar"), bar(i, overlay[i], "#ba2121", "bar-errors") if overlay else "")
        for i, value in enumerate(values)))
    return _frame(name, top, labels, bars)


def line_chart(labels: list[str], lines: dict[str, list[float | None]], *, name: str) -> SafeString:
    """One polyline per series (gaps where a period had no finished request), a dot with its value per point."""
    top = max((v for values in lines.values() for v in values if v is not None), default=0) or 1
    slot = (WIDTH - LEFT) / max(len(labels), 1)
    plot = HEIGHT - BOTTOM - 16
    colors = ("#417690", "#e08e0b")
    parts = []
    for (series, values), color in zip(lines.items(), colors):
        points = [(LEFT + (i + 0.5) * slot, HEIGHT - BOTTOM - plot * v / top, i, v)
                  for i, v in enumerate(values) if v is not None]
        parts.append(format_html('<polyline class="line" data-series="{}" fill="none" stroke="{}" stroke-width="2" '
                                 'points="{}"/>', series, color, " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)))
        parts.append(format_html_join("", '<circle class="point" data-series="{}" data-value="{}" cx="{}" '
                                          'cy="{}" r="2.5" fill="{}"><title>{} {}: {} ms</title></circle>',
                                      ((series, round(v), _px(x), _px(y), color, labels[i], series, _number(round(v)))
                                       for x, y, i, v in points)))
    legend = format_html_join("", '<text x="{}" y="12" font-size="11" fill="{}">{}</text>',
                              ((LEFT + 8 + 40 * i, color, series) for i, (series, color) in
                               enumerate(zip(lines, colors))))
    return _frame(name, top, labels, format_html("{}{}", legend, SafeString("".join(parts))))


def _px(value: float) -> str:
    return f"{value:.1f}"


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:g}"
