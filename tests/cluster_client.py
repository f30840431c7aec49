"""A deployment started by ``scripts/cluster.sh`` (Postgres, Redis, Celery workers, the sandbox), driven
through Airflow's REST API and the sandbox's admin endpoints: used by the cluster tests and benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
DAG_ID = "cutout_cluster_catalog"


class Cluster:
    """The running deployment, through its REST API and the sandbox's admin endpoints."""

    def __init__(self, env: dict[str, str], script: subprocess.Popen[str], folder: Path) -> None:
        self.env, self.script, self.folder = env, script, folder
        self.api, self.sandbox = env["API_URL"] + "/api/v2", env["SANDBOX_URL"]

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = requests.request(method, self.api + path, timeout=30, **kwargs)
        if not answer.ok:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()

    def trigger(self, out: Path, **conf: Any) -> str:
        body = {"logical_date": None, "conf": {"out": str(out), **conf}}
        return str(self.call("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"])

    def wait(self, run_id: str, timeout: float = 300, dag_id: str = DAG_ID) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return str(state)
            time.sleep(1)
        raise TimeoutError(f"{run_id} did not finish within {timeout}s; logs in {self.folder}")

    def first_run(self, dag_id: str, timeout: float = 300) -> dict[str, Any]:
        """The first run the scheduler makes of ``dag_id`` (scheduled, or triggered by an asset), once it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
            if runs and runs[0]["state"] in ("success", "failed"):
                return dict(runs[0])
            time.sleep(1)
        raise TimeoutError(f"no run of {dag_id} ended within {timeout}s; logs in {self.folder}")

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

    def waiting_gate(self, dag_id: str, exclude: tuple[str, ...] = (), timeout: float = 300) -> str:
        """The run of ``dag_id`` whose human-in-the-loop task waits for an answer (other than ``exclude``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.call("GET", f"/dags/{dag_id}/dagRuns/~/hitlDetails")["hitl_details"]
            waiting = [d["task_instance"]["dag_run_id"] for d in found if not d.get("response_received")
                       and d["task_instance"].get("state") == "awaiting_input"]  # Airflow resumes a parked one only
            waiting = [run for run in waiting if run not in exclude]
            if waiting:
                return str(waiting[0])
            time.sleep(1)
        raise TimeoutError(f"no task of {dag_id} asked for an answer within {timeout}s; logs in {self.folder}")

    def kill_worker(self, name: str) -> None:
        """SIGKILL a Celery worker and every process of its session (its pool and running tasks)."""
        subprocess.run(["pkill", "-KILL", "-s", self.env[f"PGID_{name}"]], check=False)


@contextlib.contextmanager
def running_cluster(folder: Path, workers: int = 2, **settings: str) -> Iterator[Cluster]:
    """``scripts/cluster.sh`` with ``workers`` Celery workers and the cluster DAG, state under ``folder``,
    ``settings`` added to its environment; stopped (every component) on the way out."""
    dags = folder / "dags"
    dags.mkdir()
    for name in ("cutout_cluster_catalog.py", "cutout_cluster_review.py"):
        (dags / name).symlink_to(REPO / "tests" / "cluster_dags" / name)
    for example in ("example_cutout_catalog_refresh.py", "example_cutout_publish.py", "example_cutout_review.py",
                    "catalog"):
        (dags / example).symlink_to(REPO / "example_dags" / example)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k == "AIRFLOW__CUTOUT__REVIEW_SECRET"}
    env.update({
        "CUTOUT_CLUSTER_DIR": str(folder / "state"), "CUTOUT_CLUSTER_DAGS": str(dags),
        "CUTOUT_CLUSTER_PYTHON": sys.executable, "CUTOUT_CLUSTER_WORKERS": str(workers),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2", **settings,
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
