"""The catalog refresh on a real deployment: ``scripts/cluster.sh`` starts PostgreSQL, Redis, the API
server, scheduler, DAG processor, triggerer, two Celery workers and the sandbox on loopback; the tests
trigger the chunked catalog through the REST API as a user would, read task instances and summaries back
through it, and check every charge against the sandbox's ledger. Newest Airflow only (``-m cluster``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_cutout.manifest import read_manifest
from tests.conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
DAG_ID = "cutout_cluster_catalog"


class Cluster:
    """The running deployment, through its REST API and the sandbox's admin endpoints."""

    def __init__(self, env: dict[str, str], script: subprocess.Popen[str], folder: Path) -> None:
        self.env, self.script, self.folder = env, script, folder
        self.api, self.sandbox = env["API_URL"] + "/api/v2", env["SANDBOX_URL"]

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = requests.request(method, self.api + path, timeout=30, **kwargs)
        assert answer.ok, f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    def trigger(self, out: Path, **conf: Any) -> str:
        body = {"logical_date": None, "conf": {"out": str(out), **conf}}
        return str(self.call("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"])

    def wait(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            time.sleep(1)
        pytest.fail(f"{run_id} did not finish within {timeout}s; logs in {self.folder}")

    def chunks(self, run_id: str) -> list[dict[str, Any]]:
        tis = self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        chunks = [t for t in tis["task_instances"] if t["task_id"] == "refresh_chunk"]
        return sorted(chunks, key=lambda t: t["map_index"])

    def summaries(self, run_id: str) -> list[dict[str, Any]]:
        out = []
        for ti in self.chunks(run_id):
            entry = self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/refresh_chunk/xcomEntries/"
                              "return_value", params={"map_index": ti["map_index"], "deserialize": True})
            out.append(entry["value"])
        return out

    def ledger(self) -> dict[str, Any]:
        return requests.get(f"{self.sandbox}/__sandbox__/ledger", timeout=10).json()

    def charges(self) -> dict[str, int]:
        return {fp: v["charges"] for fp, v in self.ledger()["by_fingerprint"].items() if v["charges"]}

    def reset(self, latency: float) -> None:
        requests.post(f"{self.sandbox}/__sandbox__/reset", json={"balance": 1_000_000, "latency": latency},
                      timeout=10).raise_for_status()

    def kill_worker(self, name: str) -> None:
        """SIGKILL a Celery worker and every process of its session (its pool and running tasks)."""
        subprocess.run(["pkill", "-KILL", "-s", self.env[f"PGID_{name}"]], check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    dags = folder / "dags"
    dags.mkdir()
    (dags / "cutout_cluster_catalog.py").symlink_to(REPO / "tests" / "cluster_dags" / "cutout_cluster_catalog.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "CUTOUT_CLUSTER_DIR": str(folder / "state"), "CUTOUT_CLUSTER_DAGS": str(dags),
        "CUTOUT_CLUSTER_PYTHON": sys.executable, "CUTOUT_SANDBOX_ARGS": "--charge-hung-up --balance 1000000",
        "CUTOUT_POOL_SLOTS": "8",
        # a killed worker's task instances are failed (and retried elsewhere) within seconds, not minutes
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
    })
    log = (folder / "cluster.out").open("w")
    script = subprocess.Popen(["bash", str(REPO / "scripts" / "cluster.sh")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while "cluster ready" not in (folder / "cluster.out").read_text():
            assert script.poll() is None, (folder / "cluster.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the cluster did not start within 420 s"
            time.sleep(1)
        values = dict(line.split("=", 1) for line in (folder / "state" / "cluster.env").read_text().split())
        running = Cluster(values, script, folder / "state")
        deadline = time.monotonic() + 120
        while requests.get(f"{running.api}/dags/{DAG_ID}", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the DAG processor did not parse the cluster DAG"
            time.sleep(1)
        running.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        yield running
    finally:
        script.send_signal(signal.SIGTERM)  # its trap stops every component
        try:
            script.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
        log.close()


def test_chunks_spread_over_both_workers_charge_once_and_rerun_free(cluster, tmp_path):
    cluster.reset(latency=0.2)
    n = 300
    run = cluster.trigger(tmp_path / "a", n=n, chunk_size=50)
    assert cluster.wait(run) == "success"
    chunks = cluster.chunks(run)
    assert len(chunks) == 6 and {t["state"] for t in chunks} == {"success"}
    assert {t["hostname"] for t in chunks} == {"worker1", "worker2"}  # both workers ran chunks
    summaries = cluster.summaries(run)
    assert sum(s["edited"] for s in summaries) == n and sum(s["credits_spent"] for s in summaries) == 4 * n
    assert len(cluster.charges()) == n and set(cluster.charges().values()) == {1}

    again = cluster.trigger(tmp_path / "a", n=n, chunk_size=50)
    assert cluster.wait(again) == "success"
    assert sum(s["skipped"] for s in cluster.summaries(again)) == n
    assert cluster.ledger()["charges"] == n  # the re-run charged nothing


def test_two_overlapping_runs_charge_nothing_twice(cluster, tmp_path):
    cluster.reset(latency=0.2)
    n = 200
    runs = [cluster.trigger(tmp_path / "b", n=n, chunk_size=50) for _ in range(2)]
    assert [cluster.wait(run) for run in runs] == ["success", "success"]
    summaries = [s for run in runs for s in cluster.summaries(run)]
    assert sum(s["edited"] for s in summaries) == n
    assert sum(s["edited"] + s["skipped"] + s["by_other_runs"] + s["recovered"] for s in summaries) == 2 * n
    assert len(cluster.charges()) == n and set(cluster.charges().values()) == {1}
    entries = read_manifest(tmp_path / "b")
    assert len(entries) == n and {e["status"] for e in entries.values()} == {"stored"}


def test_a_worker_killed_mid_run_leaves_nothing_paid_twice(cluster, tmp_path):
    """SIGKILL worker1 with edits in flight: its chunks are retried on worker2, which reports the items
    the dead try may have been charged for as in doubt (by key) and resends none of them; a follow-up run
    with resend_in_doubt=True stores the rest. (Runs last: the cluster has one worker afterwards.)"""
    cluster.reset(latency=1.0)
    n, out = 200, tmp_path / "c"
    run = cluster.trigger(out, n=n, chunk_size=25)  # 8 chunks: all running at once on 2 workers x 4 slots
    deadline = time.monotonic() + 120
    while not (any(t["hostname"] == "worker1" and t["state"] == "running" for t in cluster.chunks(run))
               and cluster.ledger()["edit_calls"] >= 16):
        assert time.monotonic() < deadline, "worker1 never ran a chunk"
        time.sleep(0.5)
    cluster.kill_worker("worker1")
    killed = {t["map_index"] for t in cluster.chunks(run) if t["hostname"] == "worker1"}
    assert cluster.wait(run, timeout=400) == "failed"  # in-doubt items fail their chunks, named
    chunks = {t["map_index"]: t for t in cluster.chunks(run)}
    for index in killed:
        assert chunks[index]["try_number"] == 2 and chunks[index]["hostname"] == "worker2", chunks[index]
    entries = read_manifest(out)
    doubtful = {key for key, e in entries.items() if e["status"] == "in_doubt"}
    assert doubtful and {e["status"] for e in entries.values()} <= {"stored", "in_doubt"}
    assert len(entries) == n  # every item is stored or reported in doubt by key
    assert set(cluster.charges().values()) == {1}  # nothing charged twice without consent
    paid = cluster.ledger()["charges"]

    follow_up = cluster.trigger(out, n=n, chunk_size=25, resend_in_doubt=True)
    assert cluster.wait(follow_up, timeout=400) == "success"
    entries = read_manifest(out)
    assert len(entries) == n and {e["status"] for e in entries.values()} == {"stored"}
    assert cluster.ledger()["charges"] == paid + len(doubtful)  # only the in-doubt items were sent again
