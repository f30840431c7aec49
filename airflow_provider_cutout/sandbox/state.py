"""The sandbox's memory: configuration, credit ledger, scripted faults, stored results and the account's rate limit.

All of it sits behind one lock so that concurrent requests see a consistent balance. An API call is in
the ledger from the moment it arrives (outcome ``in_flight``) and gets its outcome and charge when it
finishes, so a count read right after a run sees a resend still in flight; ``reset`` waits for every
request in flight (a slow source read too), so a late charge or read never lands in the next ledger.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = {
    "rate_limit": "429 with an optional Retry-After header; nothing charged",
    "http_error": "an error status (default 500) with a JSON error envelope; nothing charged, unless "
                  "after_edit=true: the edit is done and charged first (a gateway's 504 during a long edit)",
    "html_error": "an HTML error page (default status 502), as a proxy would send; nothing charged, unless "
                  "after_edit=true",
    "drop": "close the connection without an answer; with after_edit=true the edit is done and charged first",
    "slow": "wait `delay` seconds before answering; the edit completes and is charged",
    "malformed_json": "HTTP 200 with a broken JSON body, after the edit was done and charged",
    "truncated_body": "HTTP 200 whose body stops short of its Content-Length, after the edit was charged",
    "insufficient_balance": "code 1001 'Insufficient balance'; nothing charged",
    "unknown_code": "an error envelope with `code` (default 9999) and `msg`; nothing charged",
    "failed_edit": "code 0 with data.status 0 and `fail_reason`; nothing charged",
    "huge_body": "HTTP 200 with a body of `size` bytes (default 64 MiB) that is not JSON",
    "redirect": "HTTP 302 to `location` (default: the same URL, a redirect loop)",
}
FAULT_PATHS = ("edit", "balance", "results", "samples", "any")


@dataclass
class Fault:
    """One scripted fault, applied to the next ``count`` requests on ``path`` after the first ``skip``."""

    kind: str
    count: int = 1
    skip: int = 0
    path: str = "edit"
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    code: int | None = None
    msg: str | None = None
    fail_reason: str | None = None
    after_edit: bool = False
    size: int = 64 * 1024 * 1024
    location: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if self.path not in FAULT_PATHS:
            raise ValueError(f"unknown fault path {self.path!r}; use one of {', '.join(FAULT_PATHS)}")
        if self.count < 1:
            raise ValueError("fault count must be at least 1")

    @property
    def after_work(self) -> bool:
        """Whether it strikes once the edit is done and charged (it mangles the answer)."""
        return self.after_edit or self.kind in ("slow", "malformed_json", "truncated_body")


@dataclass
class SandboxConfig:
    """How the sandbox behaves.

    :param api_key: the only key accepted; ``None`` accepts any non-empty key.
    :param balance: starting pay-as-you-go credits.
    :param latency: seconds added to every edit, or a dict of seconds per model.
    :param result_ttl: seconds a result URL lives (``None``: forever).
    :param images_dir: a folder served under ``/images/``.
    :param charge_hung_up: charge an edit whose client hung up while it ran, as a service that
        finishes the work anyway would (by default such edits are cancelled and free).
    :param latency_only: skip fetching sources and editing; answer every valid edit with a tiny PNG
        after the latency, so benchmarks at catalog scale measure the client, not the sandbox.
    :param rate_limit: the account's rate limit: edits accepted per second, on average (``None``: no limit);
        an edit over it is answered 429 with ``Retry-After`` and is not charged.
    :param rate_burst: how many edits may come at once (the token bucket's capacity); by default
        ``rate_limit``, and at least 1.
    """

    api_key: str | None = None
    balance: int = 1000
    latency: float | dict[str, float] = 0.0
    result_ttl: float | None = None
    images_dir: str | None = None
    charge_hung_up: bool = False
    latency_only: bool = False
    rate_limit: float | None = None
    rate_burst: float | None = None

    def __post_init__(self) -> None:
        self.rate_limit, self.rate_burst = check_rate_limit(self.rate_limit, self.rate_burst)

    @property
    def burst(self) -> float:
        """The token bucket's capacity: ``rate_burst``, by default ``rate_limit``, at least 1."""
        if self.rate_burst is not None:
            return max(1.0, self.rate_burst)
        return max(1.0, self.rate_limit or 1.0)

    def latency_for(self, model: str) -> float:
        """Seconds an edit with ``model`` takes."""
        if isinstance(self.latency, dict):
            return float(self.latency.get(model, self.latency.get("default", 0.0)))
        return float(self.latency)


def check_rate_limit(rate: Any, burst: Any) -> tuple[float | None, float | None]:
    """A rate limit (edits per second, ``None`` for none) and its burst (``None`` for the default), as floats;
    ``ValueError`` for a rate that is not above 0, a burst under 1, or a burst without a rate."""
    if rate is None:
        if burst is not None:
            raise ValueError("rate_burst needs a rate_limit")
        return None, None
    if isinstance(rate, bool) or isinstance(burst, bool):
        raise ValueError("rate_limit and rate_burst are numbers")
    rate = float(rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate_limit must be a number of edits per second above 0, not {rate:g}")
    if burst is not None:
        burst = float(burst)
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"rate_burst must be at least 1, not {burst:g}")
    return rate, burst


def fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of the canonical request body (the provider computes the same from its request)."""
    canonical = {k: payload.get(k) for k in ("prompt", "model", "aspectRatios", "imageUrl")}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class SandboxState:
    """Balance, ledger, faults and results, shared by the request threads."""

    config: SandboxConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    balance: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    results: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    photo_versions: dict[str, int] = field(default_factory=dict)  # "mug.png?w=40&h=30" -> version (1 by default)
    photo_served: dict[str, int] = field(default_factory=dict)  # how often re-served with new validators
    source_bytes: dict[str, int] = field(default_factory=dict)  # body bytes of the sample reads, by status
    source_reads: dict[str, int] = field(default_factory=dict)  # answers to sample reads: "200", "206", "304", "HEAD"
    source_log: dict[str, int] = field(default_factory=dict)  # the same per URL: "206 /samples/mug.png?w=40&h=30"
    next_id: int = 789_000_000_000_001
    in_flight: int = 0  # API calls that arrived and have not finished
    # the account's token bucket: tokens left, when last counted (time.monotonic) and the (rate, burst) it is for
    bucket_tokens: float = 0.0
    bucket_at: float = 0.0
    bucket_for: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.balance = self.config.balance
        self.idle = threading.Condition(self.lock)
        self.started_rate = (self.config.rate_limit, self.config.rate_burst)  # what a reset goes back to

    def reset(self, balance: int | None = None, latency: float | None = None,
              rate: tuple[Any, Any] | None = None) -> None:
        """A new balance (and, if given, a new edit latency); no calls, faults or results, a full token bucket.
        ``rate`` is a new ``(rate_limit, rate_burst)``, ``(None, None)`` for no limit; ``None`` goes back to the
        limit the sandbox was started with. Waits (up to a minute) for the requests in flight to finish first;
        one still running after that cannot reach the new ledger (its entry is no longer in it) but may still
        take from the new balance."""
        rate_limit, rate_burst = check_rate_limit(*(self.started_rate if rate is None else rate))
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=60)
            self.balance = self.config.balance if balance is None else balance
            if latency is not None:
                self.config.latency = float(latency)
            self.config.rate_limit, self.config.rate_burst = rate_limit, rate_burst
            self.bucket_for = None  # filled up at the next edit
            self.calls.clear()
            self.faults.clear()
            self.results.clear()
            self.photo_versions.clear()
            self.photo_served.clear()
            self.source_reads.clear()
            self.source_bytes.clear()
            self.source_log.clear()

    def add_faults(self, specs: list[dict[str, Any]]) -> list[Fault]:
        """Queue scripted faults (see ``FAULT_KINDS``)."""
        faults = [Fault(**spec) for spec in specs]
        with self.lock:
            self.faults.extend(faults)
        return faults

    def take_fault(self, path: str) -> Fault | None:
        """The next scripted fault for ``path``, counting it down (``any`` strikes the API and result URLs, not
        the photos: a source server is another server)."""
        with self.lock:
            for fault in self.faults:
                if fault.path == path or (fault.path == "any" and path != "samples"):
                    if fault.skip > 0:  # this request passes
                        fault.skip -= 1
                        return None
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def take_token(self) -> float | None:
        """Take a token from the account's bucket for an edit: ``None`` when taken (or there is no limit), else
        the seconds until a token will be there (the edit is over the limit and takes nothing)."""
        with self.lock:
            rate = self.config.rate_limit
            if rate is None:
                return None
            burst, now = self.config.burst, time.monotonic()
            if self.bucket_for != (rate, burst):  # a new limit (a reset, or the config set anew): a full bucket
                self.bucket_for, self.bucket_tokens = (rate, burst), burst
            else:
                self.bucket_tokens = min(burst, self.bucket_tokens + (now - self.bucket_at) * rate)
            self.bucket_at = now
            if self.bucket_tokens >= 1:
                self.bucket_tokens -= 1
                return None
            return (1 - self.bucket_tokens) / rate

    def record(self, path: str, outcome: str, call: dict[str, Any] | None = None, **details: Any) -> None:
        """Add a call to the ledger, or give ``call`` (from ``arrive``) its outcome; an outcome other than
        ``in_flight`` stamps the call with ``at``, the time (``time.time()``) it was answered."""
        with self.lock:
            if outcome != "in_flight":
                details.setdefault("at", time.time())
            if call is not None:
                call.update(outcome=outcome, **details)
            else:
                self.calls.append({"seq": len(self.calls) + 1, "path": path, "outcome": outcome, **details})

    def arrive(self, path: str | None) -> dict[str, Any] | None:
        """A request that has just arrived, in flight until ``depart``; an API call (``path`` ``edit`` or
        ``balance``) is in the ledger at once, and returned to be given its outcome."""
        with self.lock:
            self.in_flight += 1
            if path is None:
                return None
            call: dict[str, Any] = {"seq": len(self.calls) + 1, "path": path, "outcome": "in_flight", "credits": 0}
            self.calls.append(call)
            return call

    def depart(self, call: dict[str, Any] | None) -> None:
        """A request is answered (an API call never given an outcome is ``interrupted``)."""
        with self.idle:
            if call is not None and call["outcome"] == "in_flight":
                call.update(outcome="interrupted", at=time.time())
            self.in_flight -= 1
            self.idle.notify_all()

    def count_source_read(self, answer: str, target: str, size: int = 0) -> None:
        """Count an answer to a sample read by its status, or ``HEAD`` (the request log of the source checks),
        in all and for its URL's path and query ``target``, and the ``size`` of the body it carried."""
        with self.lock:
            self.source_reads[answer] = self.source_reads.get(answer, 0) + 1
            self.source_bytes[answer] = self.source_bytes.get(answer, 0) + size
            line = f"{answer} {target}"
            self.source_log[line] = self.source_log.get(line, 0) + 1

    def charge(self, credits: int) -> bool:
        """Take ``credits`` from the balance; ``False`` when it is short."""
        with self.lock:
            if self.balance < credits:
                return False
            self.balance -= credits
            return True

    def new_id(self) -> str:
        """The next edit id."""
        with self.lock:
            self.next_id += 1
            return str(self.next_id)

    def store_result(self, result_id: str, data: bytes) -> None:
        """Keep an edited image for ``/results/``."""
        with self.lock:
            self.results[result_id] = (data, time.monotonic())

    def get_result(self, result_id: str) -> bytes | None:
        """An edited image, or ``None`` when unknown or expired."""
        with self.lock:
            item = self.results.get(result_id)
        if item is None:
            return None
        data, created = item
        ttl = self.config.result_ttl
        if ttl is not None and time.monotonic() - created > ttl:
            return None
        return data

    def ledger(self) -> dict[str, Any]:
        """Calls and charges, in total and per request fingerprint."""
        with self.lock:
            calls = [dict(c) for c in self.calls]
            balance = self.balance
            reads = dict(sorted(self.source_reads.items()))
            read_bytes = dict(sorted(self.source_bytes.items()))
            log = dict(sorted(self.source_log.items()))
        per_fp: dict[str, dict[str, int]] = {}
        for call in calls:
            fp = call.get("fingerprint")
            if not fp:
                continue
            entry = per_fp.setdefault(fp, {"calls": 0, "charges": 0, "credits": 0})
            entry["calls"] += 1
            if call.get("credits", 0):
                entry["charges"] += 1
                entry["credits"] += call["credits"]
        edits = [c for c in calls if c["path"] == "edit"]
        return {
            "balance": balance,
            "edit_calls": len(edits),
            "charges": sum(1 for c in edits if c.get("credits", 0)),
            "credits_charged": sum(c.get("credits", 0) for c in edits),
            "rate_limited": sum(1 for c in edits if c["outcome"] == "rate_limited"),
            "calls": calls,
            "by_fingerprint": per_fp,
            "source_reads": reads,
            "source_bytes": read_bytes,
            "source_log": log,
        }
