"""Benchmark 10 of ``make bench`` (``--only 10``; rows 16 to 18 of docs/performance.md): the account's rate limit.

A batch at ``max_concurrency`` 32, edits of 0.2 s, against an account that takes 10 edits a second (the
sandbox's token bucket, burst 10: over it, 429 with ``Retry-After``, nothing charged): 200 and 2,000 items. Then
4 batches at once (4 processes, as 4 chunks on 4 workers), each with its own governor, sharing the account.
Each batch runs in a process of its own, so ``--before DIR`` measures another checkout's client (its
``airflow_provider_cutout`` on ``PYTHONPATH``) against the same sandbox.

Usage: python scripts/bench_rate.py [--quick] [--before DIR]  (alone: prints the results as JSON lines)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RATE, BURST, LATENCY, CONCURRENCY = 10.0, 10.0, 0.2, 32
_RUN = """
import json, sys, time
from types import SimpleNamespace
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
items = json.loads(open(sys.argv[1]).read())
op = CutoutBatchImageEditOperator(task_id="bench", items=items, output_dir=sys.argv[2],
                                  max_concurrency=int(sys.argv[3]), progress_interval=3600)
started = time.perf_counter()
try:
    summary = op.execute({"ti": SimpleNamespace(map_index=-1, dag_id="bench", task_id="bench", run_id="bench")})
except Exception as err:
    summary = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
print("BENCH " + json.dumps({"summary": summary, "wall": time.perf_counter() - started}))
"""


def _start(url: str, items: list[dict[str, Any]], out: str, code_root: str | None) -> subprocess.Popen[str]:
    listing = Path(out) / "items.json"
    listing.write_text(json.dumps(items))
    env = {**os.environ, "AIRFLOW_CONN_CUTOUT_DEFAULT": json.dumps(
        {"conn_type": "cutout", "host": url, "password": "bench-key-not-secret", "extra": {"pool_size": CONCURRENCY}})}
    if code_root:
        env["PYTHONPATH"] = code_root
    return subprocess.Popen([sys.executable, "-c", _RUN, str(listing), out + "/out/", str(CONCURRENCY)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=3600)
    line = next(line for line in reversed(out.splitlines()) if line.startswith("BENCH "))
    return dict(json.loads(line[6:]))


def _items(url: str, n: int, tag: str) -> list[dict[str, Any]]:
    return [{"key": f"{tag}-{i}", "prompt": "grayscale",
             "image_urls": [f"{url}/samples/mug.png?w={16 + i % 100}&h={16 + i // 100}&t={tag}"]} for i in range(n)]


def _reset(url: str) -> None:
    import requests

    requests.post(f"{url}/__sandbox__/reset", json={"balance": 100_000_000, "rate_limit": RATE, "rate_burst": BURST},
                  timeout=60).raise_for_status()


def _ledger(url: str) -> dict[str, Any]:
    import requests

    return dict(requests.get(f"{url}/__sandbox__/ledger", timeout=60).json())


def one_batch(url: str, n: int, code_root: str | None = None) -> dict[str, Any]:
    """One batch of ``n`` items against the limited account: wall time against N / rate, the share of calls
    answered 429, and items failed (not charged: a 429 charges nothing)."""
    _reset(url)
    with tempfile.TemporaryDirectory() as out:
        run = _finish(_start(url, _items(url, n, "b"), out, code_root))
    ledger = _ledger(url)
    failed = n - ledger["charges"]
    share = ledger["rate_limited"] / max(1, ledger["edit_calls"])
    ratio = run["wall"] / (n / RATE)
    return {"items": n, "wall": round(run["wall"], 1), "wall_ratio": round(ratio, 3), "calls": ledger["edit_calls"],
            "answered_429": ledger["rate_limited"], "share_429": round(share, 3), "failed": failed,
            "settled_rate": run["summary"].get("rate"), "error": run["summary"].get("error")}


def four_chunks(url: str, n: int, code_root: str | None = None) -> dict[str, Any]:
    """4 batches of ``n`` items started together on one account: each one's accepted rate over the time all 4
    were sending, their sum against the limit, and Jain's fairness index of the shares (1: equal)."""
    from airflow_provider_cutout.manifest import read_manifest

    _reset(url)
    with tempfile.TemporaryDirectory() as out:
        folders = [f"{out}/c{k}" for k in range(4)]
        for folder in folders:
            os.makedirs(folder)
        procs = [_start(url, _items(url, n, f"c{k}"), folder, code_root) for k, folder in enumerate(folders)]
        runs = [_finish(proc) for proc in procs]
        # when each batch's items were stored (the manifest's clock): a chunk's accepted edits over time
        spans = [sorted(float(e["updated_at"]) for e in read_manifest(folder + "/out/").values()
                        if e.get("status") == "stored") for folder in folders]
    if not all(spans):
        raise AssertionError(f"a chunk stored nothing: {[run['summary'] for run in runs]}")
    start, end = max(s[0] for s in spans), min(s[-1] for s in spans)  # while all four were sending
    window = max(end - start, 1e-9)
    rates = [sum(start <= at <= end for at in s) / window for s in spans]
    jain = sum(rates) ** 2 / (4 * sum(r * r for r in rates))
    ledger = _ledger(url)
    return {"chunks": 4, "items_each": n, "rates": [round(r, 2) for r in rates], "sum": round(sum(rates), 2),
            "sum_ratio": round(sum(rates) / RATE, 3), "jain": round(jain, 3), "window_s": round(window, 1),
            "failed": 4 * n - ledger["charges"], "share_429": round(ledger["rate_limited"] / ledger["edit_calls"], 3),
            "errors": [r["summary"].get("error") for r in runs if r["summary"].get("error")],
            "settled": [r["summary"].get("rate") for r in runs]}


def results(url: str, quick: bool) -> list[dict[str, Any]]:
    """Benchmark 10's rows for ``scripts/bench.py``."""
    rows = []
    for row, n in ((16, 200), (17, 2000))[:1 if quick else 2]:
        got = one_batch(url, n)
        passed = got["failed"] == 0 and got["wall_ratio"] <= 1.2 and got["share_429"] <= 0.10
        rows.append({"name": f"{row}. account rate limit, {n:,} items", "metric": "wall time / (N / account rate)",
                     "value": got["wall_ratio"], "target": "<= 1.2, 429s <= 10 % of calls, 0 failed",
                     "passed": passed,
                     "detail": f"{n} edits at max_concurrency {CONCURRENCY}, {LATENCY} s each, an account of "
                               f"{RATE:g}/s (burst {BURST:g}): {got['wall']} s, {got['calls']} calls, "
                               f"{got['answered_429']} answered 429 ({got['share_429']:.1%}), {got['failed']} failed, "
                               f"settled at {got['settled_rate']} edits/s"})
    got = four_chunks(url, 100 if quick else 150)  # fewer: too short a window to converge
    passed = got["failed"] == 0 and 1 / 1.2 <= got["sum_ratio"] <= 1.2 and got["jain"] >= 0.9
    rows.append({"name": "18. account rate limit, 4 chunks at once", "metric": "sum of their rates / account rate",
                 "value": got["sum_ratio"], "target": "within 1.2x, Jain's fairness >= 0.9, 0 failed",
                 "passed": passed,
                 "detail": f"4 batches of {got['items_each']} on one {RATE:g}/s account, each with its own governor: "
                           f"rates {got['rates']} edits/s over the {got['window_s']} s all four sent (sum "
                           f"{got['sum']}), Jain's index {got['jain']}, {got['failed']} failed, "
                           f"{got['share_429']:.1%} of calls answered 429"})
    return rows


def main() -> int:
    before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
    sandbox = subprocess.Popen([sys.executable, "-m", "airflow_provider_cutout.sandbox", "--port", "0", "--balance",
                                "100000000", "--latency", str(LATENCY), "--rate-limit", str(RATE), "--rate-burst",
                                str(BURST)], stdout=subprocess.PIPE, text=True)
    try:
        url = json.loads(sandbox.stdout.readline())["sandbox"]  # type: ignore[union-attr]
        if before:
            print(json.dumps({"before": before, **one_batch(url, 200, before)}), flush=True)
            print(json.dumps({"before": before, **four_chunks(url, 50, before)}), flush=True)
        else:
            for row in results(url, "--quick" in sys.argv):
                print(json.dumps(row), flush=True)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
