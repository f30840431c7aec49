"""The governor of a task's edits (``api.governor``) on a clock the test turns: slow start, a pause for every
thread on a 429, the drop to what the account accepted, additive increase, the cap, a stall, and a stop that
ends every wait. Real runs against a rate-limited sandbox are in test_rate_limit.py."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from airflow_provider_cutout.api.governor import BETA, INCREASE, START_RATE, Governor


class Clock:
    """A monotonic clock and a stop event whose waits turn the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.stop = False

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return self.stop

    def is_set(self) -> bool:
        return self.stop


def governor(**kwargs) -> tuple[Governor, Clock]:
    clock = Clock()
    return Governor(clock, clock=clock, **kwargs), clock  # type: ignore[arg-type] # the clock is the event


def test_slow_start_doubles_each_second_up_to_the_cap():
    gov, clock = governor()
    starts = [gov.admit() - 1000.0 for _ in range(4)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] == pytest.approx(1 / START_RATE) and gaps == sorted(gaps, reverse=True)  # 4 a second, rising
    clock.now += 2.0
    assert gov.rate == pytest.approx(START_RATE * 2 ** (clock.now - 1000.0), rel=0.01) and gov.settled is None
    capped, clock = governor(cap=5.0)
    clock.now += 10
    assert capped.rate == 5.0


def test_a_429_pauses_every_thread_and_drops_the_rate_to_what_the_account_accepted():
    gov, clock = governor()
    for _ in range(60):  # the account accepts 10 a second for 6 s
        clock.now += 0.1
        gov.answered(gov.admit(), throttled=False)
    sent = gov.admit()
    gov.answered(sent, throttled=True, retry_after=2.0)
    assert gov.settled is not None and gov.rate_limited == 1
    assert gov.rate == pytest.approx(BETA * 10, rel=0.05)  # from the accepted rate over the last 5 s
    assert gov.admit() >= sent + 2.0  # every thread waits for the Retry-After
    before = gov.rate
    gov.answered(sent, throttled=True, retry_after=1.0)  # sent at the old rate: lowers nothing more
    assert gov.rate == pytest.approx(before, rel=0.01) and gov.rate_limited == 2
    clock.now += 10  # ten seconds without a 429: additive increase
    assert gov.rate == pytest.approx(before + max(INCREASE, 0.02 * before) * 10, rel=0.05)


def test_a_429_without_retry_after_pauses_a_second_and_a_long_one_is_capped():
    gov, clock = governor(retry_after_max=30.0)
    gov.answered(gov.admit(), throttled=True)
    assert gov.admit() >= 1001.0
    gov.answered(gov.admit(), throttled=True, retry_after=3600)
    assert gov.admit() <= clock.now + 31


def test_an_account_that_accepts_nothing_for_its_patience_stalls():
    gov, clock = governor(patience=60.0)
    assert not gov.stalled()
    gov.answered(gov.admit(), throttled=True, retry_after=1)
    clock.now += 59
    assert not gov.stalled()
    clock.now += 2
    assert gov.stalled() and "answered 429" in gov.describe()
    gov.answered(gov.admit(), throttled=False)
    assert not gov.stalled()


def test_a_stop_ends_a_wait_in_the_governor_at_once():
    stopped = threading.Event()
    gov = Governor(stopped)
    gov.answered(gov.admit(), throttled=True, retry_after=60)  # every thread pauses for a minute
    waited: list[float] = []
    threads = [threading.Thread(target=lambda: waited.append(_timed(gov.admit))) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    stopped.set()
    for thread in threads:
        thread.join(timeout=5)
    assert len(waited) == 3 and max(waited) < 5  # woken by the stop, not by the minute


def _timed(function) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started


def test_a_first_429_long_after_the_governor_was_made_is_waited_out_and_slow_start_begins_with_the_first_edit():
    """Planning and source checks took 20 minutes: the patience counts from the first 429, not from then, and the
    first edits still go at the slow start's pace (a review found both counted from the governor's creation)."""
    gov, clock = governor(patience=600.0)
    clock.now += 1200
    starts = [gov.admit() for _ in range(3)]
    assert starts[1] - starts[0] == pytest.approx(1 / START_RATE)
    gov.answered(starts[2], throttled=True, retry_after=1)
    assert not gov.stalled()


def test_a_ceiling_below_the_governors_floor_is_kept_and_the_settled_rate_is_what_the_account_took():
    gov, clock = governor(cap=0.02)
    first = gov.admit()
    assert gov.admit() - first == pytest.approx(50.0)  # one edit every 50 s, as requests_per_second asked
    gov, clock = governor()
    for _ in range(30):  # 3 a second for 10 s
        clock.now += 1 / 3
        gov.answered(gov.admit(), throttled=False)
    gov.answered(gov.admit(), throttled=True)
    clock.now += 1800  # half an hour without a 429: the governor probes up, the settled rate stays what was taken
    assert gov.settled == pytest.approx(3.0, rel=0.1) and gov.rate > 100
    assert gov.describe().startswith("3.0 edits/s accepted, 1 answered 429")
