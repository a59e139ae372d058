"""The dashboard: traffic, answers, latency, recorder, accuracy and drift for a time window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import abort, current_app, render_template, request

from titanic_web import charts, get_service, monitoring
from titanic_web.drift import DRIFT_ABOVE, STABLE_BELOW
from titanic_web.extensions import db
from titanic_web.models import now_utc
from titanic_web.web import bp

#: PSI drawn full width in the drift table's bars: well into the drift band.
PSI_SCALE = 0.5


def bucket_words(seconds: int) -> str:
    """A bucket width in words: "minute", "5 minutes", "hour", "6 hours", "day", "7 days"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} seconds"


def _time_label(moment: datetime, width: int) -> str:
    return moment.strftime("%d %b" if width >= 86400 else "%H:%M")


def _time_tip(moment: datetime, width: int) -> str:
    return moment.strftime("%Y-%m-%d" if width >= 86400 else "%Y-%m-%d %H:%M") + " UTC"


@dataclass(frozen=True)
class Traffic:
    """The window's time series as charts."""

    volume: charts.Chart
    survival: charts.Chart
    buckets: list[monitoring.Bucket]


def traffic_charts(buckets: list[monitoring.Bucket], width: int) -> Traffic:
    """Predictions per bucket as bars, the survival rate per bucket as a line."""
    labels = [_time_label(b.start, width) for b in buckets]
    tips = [_time_tip(b.start, width) for b in buckets]
    volume = charts.bar_chart(
        [b.predictions for b in buckets],
        labels,
        title="Predictions over time",
        tooltips=[f"{tip}: {b.predictions:,} predictions" for tip, b in zip(tips, buckets, strict=True)],
        y_format=lambda v: f"{v:,.0f}" if v == int(v) else f"{v:,.1f}",
    )
    survival = charts.line_chart(
        [b.survival_rate for b in buckets],
        labels,
        title="Survival rate over time",
        tooltips=[
            f"{tip}: {b.survived / b.predictions:.1%} of {b.predictions:,} predicted to survive"
            if b.predictions
            else f"{tip}: none"
            for tip, b in zip(tips, buckets, strict=True)
        ],
    )
    return Traffic(volume, survival, buckets)


def probability_ranges(bins: int) -> list[str]:
    """Each histogram bin's range in words ("10% to <20%"; the last includes 100%)."""
    return [f"{i / bins:.0%} to {'<' if i < bins - 1 else ''}{(i + 1) / bins:.0%}" for i in range(bins)]


def probability_chart(counts: list[int]) -> charts.Chart:
    """The probability histogram: bars below 0.5 read "died", the others "survived"."""
    bins = len(counts)
    labels = [f"{i / bins:.0%}" for i in range(bins)]
    ranges = probability_ranges(bins)
    return charts.bar_chart(
        counts,
        labels,
        title="Survival probabilities",
        tooltips=[f"{r}: {c:,} predictions" for r, c in zip(ranges, counts, strict=True)],
        css=["survived" if (i + 0.5) / bins >= 0.5 else "died" for i in range(bins)],
        most_x_labels=bins,
        y_format=lambda v: f"{v:,.0f}" if v == int(v) else f"{v:,.1f}",
    )


def latency_chart(latency: monitoring.Latency) -> charts.Chart | None:
    """The latency percentiles as three bars (None without any latency recorded)."""
    if not latency.count:
        return None
    names = [f"p{q * 100:g}" for q in latency.percentiles]
    values = list(latency.percentiles.values())
    return charts.bar_chart(
        values,
        names,
        title="Latency percentiles (ms)",
        width=320,
        height=180,
        tooltips=[f"{n}: {v:.2f} ms" for n, v in zip(names, values, strict=True)],
        y_format=lambda v: f"{v:g}",
    )


def drift_charts(report: monitoring.DriftReport) -> dict[str, charts.Chart]:
    """Per feature measured: its training and served shares per bin, side by side."""
    out = {}
    for feature in report.features:
        if feature.bins:
            out[feature.feature] = charts.paired_bar_chart(
                [(b.reference, b.current) for b in feature.bins],
                [b.label for b in feature.bins],
                title=f"{feature.feature}: training and served shares",
                names=("training", "served"),
                # Under the bars a range's lower end only ("14" for "14 to <19"): the whole is too wide.
                tick_labels=[b.label.split(" to <")[0] for b in feature.bins],
            )
    return out


@bp.get("/dashboard")
def dashboard() -> Any:
    """Monitoring for a time window (?window=1h|24h|7d|30d|all): charts drawn on the server as SVG."""
    config = current_app.config
    name = request.args.get("window") or monitoring.DEFAULT_WINDOW
    session = db.session()
    try:
        window = monitoring.make_window(name, now=now_utc(), session=session)
    except monitoring.FilterError as exc:
        abort(400, description=f"window: {exc}")
    totals = monitoring.summary(session, window)
    latency = monitoring.latency_percentiles(session, window)
    report = monitoring.drift_report(
        session,
        window,
        train_data=Path(config["TRAIN_DATA"]),
        min_rows=config["DRIFT_MIN_ROWS"],
        max_rows=config["DRIFT_MAX_ROWS"],
    )
    counts = monitoring.probability_histogram(session, window)
    service = get_service(current_app)
    return render_template(
        "dashboard.html",
        window=window,
        windows=list(monitoring.WINDOWS),
        per=bucket_words(window.bucket_seconds),
        totals=totals,
        traffic=traffic_charts(monitoring.time_series(session, window), window.bucket_seconds),
        histogram=probability_chart(counts),
        histogram_rows=list(zip(probability_ranges(len(counts)), counts, strict=True)),
        latency=latency,
        latency_chart=latency_chart(latency),
        accuracy=monitoring.accuracy_by_version(session, window),
        recorder=service.recorder.status(),
        recording=service.recording,
        model_version=service.predictor.version if service.predictor is not None else None,
        drift=report,
        drift_charts=drift_charts(report),
        psi_scale=PSI_SCALE,
        stable_below=STABLE_BELOW,
        drift_above=DRIFT_ABOVE,
    )
