"""The account's rate limit through real runs: a batch of more threads than the account takes, against the
sandbox's token bucket (429 with Retry-After over it, nothing charged), fails no item and pays each edit once;
an account that accepts nothing fails the edit naming the rate, and charges nothing. (The governor's rules on a
turned clock: test_governor.py; a stop during a Retry-After wait: test_batch.py and test_hook.py.)"""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_cutout import exceptions as exc
from tests.conftest import calls_and_charges, states, xcoms
from tests.dags.batch_dags import storm


def limit(sandbox, rate: float | None, burst: float | None = None) -> None:
    requests.post(f"{sandbox.url}/__sandbox__/reset", json={"balance": 5000, "rate_limit": rate, "rate_burst": burst},
                  timeout=30).raise_for_status()


def test_a_429_storm_never_fails_an_item_and_the_run_settles_near_the_accounts_rate(sandbox, airflow_db, tmp_path):
    """60 items, 16 threads, edits of 50 ms (up to 320 a second) against an account that takes 15 a second: every
    item is edited once, none fails, and the summary says how many 429s came and the rate the run settled at."""
    limit(sandbox, 15.0, 5.0)
    sandbox.server.state.config.latency = 0.05
    started = time.monotonic()
    run = storm.test(run_conf={"n": 60, "out": str(tmp_path), "changed": "", "invalid": False})
    took = time.monotonic() - started  # (the next test's sandbox starts without the limit)
    assert states(run)["batch"] == [("success", 1)]
    summary = xcoms(run, "batch")[-1]
    assert (summary["edited"], summary["failed"], summary["in_doubt"]) == (60, 0, 0), summary
    assert calls_and_charges(sandbox)[-1][1] == 1 and len(calls_and_charges(sandbox)) == 60  # each paid once
    ledger = sandbox.ledger()
    assert ledger["charges"] == 60 and ledger["rate_limited"] == summary["rate_limited"] > 0  # the limit was met
    assert ledger["rate_limited"] <= 0.25 * ledger["edit_calls"], ledger["rate_limited"]  # not a storm
    assert 3 <= summary["rate"] <= 20 and took >= (60 - 5) / 15  # settled near the account's 15 a second


def test_an_account_that_accepts_no_edit_fails_it_naming_the_rate_and_charges_nothing(sandbox, monkeypatch):
    from tests.test_hook import edit, use_conn

    hook = use_conn(monkeypatch, sandbox, rate_limit_patience=1.5)
    sandbox.fault("rate_limit", count=1000, retry_after=0.2)
    with pytest.raises(exc.RateLimitError) as info:
        edit(hook, sandbox)
    assert "answered 429 to every edit for 2 s" in str(info.value) and not info.value.retryable
    assert not info.value.maybe_charged and sandbox.ledger()["charges"] == 0
