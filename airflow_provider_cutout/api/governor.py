"""The governor of a task's edits: how fast they are sent, found from the account's own answers.

Every paid API limits how fast an account may call it, and whoever writes ``max_concurrency=32`` does not know the
number. One governor per task (its transport), passed by every thread before each attempt to send an edit:

- **slow start**: it begins at ``START_RATE`` edits a second and doubles that every second until the first 429
  (32 threads do not open with 32 requests into a limit nobody knows);
- **a 429**: every thread pauses until its ``Retry-After`` (one second when it names none), not each on its own
  schedule; and the rate drops to ``BETA`` times the rate the account accepted over the last ``WINDOW_S``
  seconds (multiplicative decrease, from what it really took; from the rate it sent at while too few were
  accepted to tell). A 429 to a request sent before that drop says nothing new (it was sent at the old rate)
  and lowers nothing;
- **then additive increase**: ``max(INCREASE, INCREASE_SHARE x rate)`` edits a second more for every second
  without a 429, probing back up. Additive increase and multiplicative decrease (AIMD, TCP's rule; the AWS SDKs'
  adaptive retry mode and Google's client-side throttling are of the same family) make the governors of several
  tasks on one account converge to fair shares;
- ``cap`` (the batch's ``requests_per_second``) is a ceiling it never passes.

A 429 costs nothing and is retried for as long as the account accepts edits at all; only when it accepted none
for ``patience`` seconds does ``stalled`` say so (the account is blocked, or another client takes it all).
Waits end at once when ``stopped`` is set (the task was told to stop). The standard library only.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

START_RATE = 4.0  # edits a second before anything is known
MAX_RATE = 1000.0  # "as fast as the threads go"
MIN_RATE = 0.1  # one edit every ten seconds at the least
BETA = 0.9  # a 429: the new rate is this share of what the account accepted
WINDOW_S = 5.0  # the accepted rate is measured over this many seconds...
MIN_SAMPLE = 5  # ...from this many accepted edits at the least
INCREASE = 0.25  # edits a second added per second without a 429, at the least...
INCREASE_SHARE = 0.02  # ...or this share of the rate
DEFAULT_PAUSE_S = 1.0  # a 429 without Retry-After pauses this long
PATIENCE_S = 600.0  # no edit accepted for this long while 429s come: the account is blocked


class Governor:
    """How fast a task's threads may send edits (module docstring).

    :param stopped: set when the task must stop: every wait ends at once.
    :param cap: the most edits a second (``None``: none but the governor's own).
    :param retry_after_max: the longest pause a ``Retry-After`` may ask for.
    :param patience: seconds without an accepted edit, while 429s come, after which ``stalled`` is true.
    :param clock: the monotonic clock (tests pass their own).
    """

    def __init__(self, stopped: threading.Event, *, cap: float | None = None, retry_after_max: float = 120.0,
                 patience: float = PATIENCE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stopped, self.cap, self.retry_after_max, self.patience = stopped, cap, retry_after_max, patience
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._base, self._since = START_RATE, now  # the rate at ``_since``, from which it grows
        self._next = now  # when the next edit may start
        self._paused_until = now
        self._decreased_at = -math.inf  # a 429 to an edit sent before this lowers nothing
        self._accepts: collections.deque[float] = collections.deque()
        self._first_send: float | None = None  # the slow start begins with the first edit, not at creation
        self._throttled_since: float | None = None  # the first 429 since the last accepted edit
        self.settled: float | None = None  # the rate the account accepted when its last new 429 came
        self.rate_limited = 0  # 429s answered so far
        self.accepted = 0

    @property
    def rate(self) -> float:
        """The edits a second the governor lets through now."""
        with self._lock:
            return self._rate(self._clock())

    def _rate(self, now: float) -> float:
        elapsed = max(0.0, now - self._since)
        if self.settled is None:  # no 429 yet: the slow start
            rate = self._base * float(2.0 ** min(elapsed, 20.0))
        else:
            rate = self._base + max(INCREASE, INCREASE_SHARE * self._base) * elapsed
        return min(max(MIN_RATE, min(rate, MAX_RATE)), self.cap or MAX_RATE)  # the cap, however low

    def admit(self) -> float:
        """Wait for this thread's turn to send (or until ``stopped``: the caller checks it); the time it was
        let through, which ``answered`` takes back."""
        while True:
            with self._lock:
                now = self._clock()
                start = max(self._next, self._paused_until)
                if start <= now:
                    if self._first_send is None:  # planning and checks took their time: the slow start is now
                        self._first_send = self._since = now
                    self._next = max(now, self._next) + 1.0 / self._rate(now)
                    return now
            if self.stopped.wait(min(start - now, 1.0)):
                return now

    def answered(self, sent_at: float, *, throttled: bool, retry_after: float | None = None) -> bool:
        """What the account answered to an edit let through at ``sent_at``: a 429 (``throttled``) or any other
        answer (accepted, whatever its outcome). Whether it lowered the rate (a 429 that says something new)."""
        with self._lock:
            now = self._clock()
            if not throttled:
                self.accepted += 1
                self._throttled_since = None
                self._accepts.append(now)
                while self._accepts and self._accepts[0] < now - WINDOW_S:
                    self._accepts.popleft()
                return False
            self.rate_limited += 1
            self._throttled_since = now if self._throttled_since is None else self._throttled_since
            pause = min(retry_after if retry_after is not None else DEFAULT_PAUSE_S, self.retry_after_max)
            self._paused_until = max(self._paused_until, now + pause)
            if sent_at < self._decreased_at:
                return False  # sent at the old rate: its 429 was already taken into account
            while self._accepts and self._accepts[0] < now - WINDOW_S:
                self._accepts.popleft()
            span = min(WINDOW_S, max(1.0, now - (self._first_send or now)))
            current = self._rate(now)  # too few accepted to measure: down from the rate it sent at
            accepted = len(self._accepts) / span if len(self._accepts) >= MIN_SAMPLE else current
            self.settled = min(current, accepted)
            self._base = max(MIN_RATE, BETA * self.settled)
            self._since = self._decreased_at = max(now, self._paused_until)  # it grows again after the pause
            self._next = self._paused_until
            return True

    def paused_for(self) -> float:
        """Seconds until edits may go again (0 when they may now)."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def stalled(self) -> bool:
        """Whether the account has answered 429 to every edit for ``patience`` seconds (counted from the first 429
        since it last accepted one)."""
        with self._lock:
            return self._throttled_since is not None and self._clock() - self._throttled_since > self.patience

    def describe(self) -> str:
        """The rate as a log line says it: what the account accepted when its last new 429 came."""
        if self.settled is None:
            return "no rate limit met"
        return f"{self.settled:.1f} edits/s accepted, {self.rate_limited} answered 429"
