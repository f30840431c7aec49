"""The provider's metrics, sent through Airflow's ``Stats`` (StatsD or OpenTelemetry, as configured).

Tags are low-cardinality only (model, outcome, reason): never item keys, URLs or connection ids.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.exceptions import CutoutError

if TYPE_CHECKING:
    from airflow_provider_cutout.api.models import ImageEditRequest, ImageEditResult

EDITS = "cutout.edits"
CREDITS = "cutout.credits"
RETRIES = "cutout.retries"
EDIT_SECONDS = "cutout.edit_seconds"
RATE_LIMITED = "cutout.rate_limited"
RATE = "cutout.rate"


def _stats() -> Any:
    try:
        from airflow.sdk.observability.stats import Stats  # Airflow 3.2+
    except ImportError:
        from airflow.stats import Stats
    return Stats


def edit_done(model: str, outcome: str, *, credits: int = 0, seconds: float | None = None) -> None:
    """Count one edit by model and outcome (``stored``, ``edited``, ``failed``, ``in_doubt``), the credits
    it spent and, when it reached the API, how long the call took."""
    stats = _stats()
    stats.incr(EDITS, tags={"model": model, "outcome": outcome})
    if credits:
        stats.incr(CREDITS, count=credits, tags={"model": model})
    if seconds is not None:
        stats.timing(EDIT_SECONDS, datetime.timedelta(seconds=seconds), tags={"model": model})


def retried(reason: str) -> None:
    """Count one retry by its reason (the error's class name, e.g. ``RateLimitError``); a 429 also counts as rate
    limited."""
    stats = _stats()
    stats.incr(RETRIES, tags={"reason": reason})
    if reason == "RateLimitError":
        stats.incr(RATE_LIMITED)


def sending_rate(rate: float | None) -> None:
    """The rate (edits a second) the task's governor lets edits through at, once the account's limit was met."""
    if rate is not None:
        _stats().gauge(RATE, rate)


def measured_edit(send: Callable[[ImageEditRequest], ImageEditResult], request: ImageEditRequest) -> ImageEditResult:
    """Send one edit through ``send`` (the hook's ``send_edit``) and count it: its outcome (``succeeded``,
    ``failed``, or ``in_doubt`` when it may have been charged), its credits and the call's seconds."""
    started = time.monotonic()
    try:
        result = send(request)
    except CutoutError as err:
        edit_done(request.model, "in_doubt" if err.maybe_charged else "failed", seconds=time.monotonic() - started)
        raise
    edit_done(result.model or request.model, "succeeded", credits=result.credits, seconds=time.monotonic() - started)
    return result
