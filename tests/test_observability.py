"""Metrics and lineage of real DAG runs: StatsD packets caught by a UDP listener in the test, and the
OpenLineage events the openlineage provider writes through its file transport, each read back and
checked against the sandbox's ledger."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.run_dag import finish, spawn


def conf(out: Path, n: int) -> dict[str, Any]:
    return {"n": n, "out": str(out), "changed": "", "invalid": False}


@pytest.fixture
def statsd_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def received(sock: socket.socket, seconds: float = 2.0) -> list[str]:
    lines, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            continue
    return lines


def test_metrics_arrive_through_statsd_with_low_cardinality_tags(sandbox, airflow_db, tmp_path, statsd_listener):
    sandbox.fault("failed_edit", count=1)
    sandbox.fault("rate_limit", count=1)
    port = statsd_listener.getsockname()[1]
    run = finish(spawn("tests.dags.batch_dags:tolerant", conf(tmp_path, 4), AIRFLOW__METRICS__STATSD_ON="True",
                       AIRFLOW__METRICS__STATSD_HOST="127.0.0.1", AIRFLOW__METRICS__STATSD_PORT=str(port),
                       AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED="True"))
    assert run["state"] == "success", run.get("log")
    ledger = sandbox.ledger()
    assert ledger["charges"] == 3 and run["summaries"][0]["failed"] == 1
    ours = [line for line in received(statsd_listener) if line.startswith("airflow.cutout.")]
    counts = Counter(line.split(":")[0] for line in ours if line.endswith("|c"))
    assert counts["airflow.cutout.edits,model=gpt-image-1,outcome=succeeded"] == 3, ours
    assert counts["airflow.cutout.edits,model=gpt-image-1,outcome=failed"] == 1, ours
    assert counts["airflow.cutout.retries,reason=RateLimitError"] == 1, ours
    credits = [int(line.split(":")[1].split("|")[0]) for line in ours if line.startswith("airflow.cutout.credits,")]
    assert sum(credits) == ledger["credits_charged"] == 12
    assert sum(1 for line in ours if line.startswith("airflow.cutout.edit_seconds,model=gpt-image-1:")
               and line.endswith("|ms")) == 4
    for line in ours:  # tags: model, outcome, reason only; never keys, URLs or connection ids
        assert "item-" not in line and "127.0.0.1" not in line and "cutout_default" not in line, line


def lineage_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for file in sorted(path.parent.glob(path.name + "*")):
        events += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return events


def test_openlineage_events_carry_sources_results_and_spend(sandbox, airflow_db, tmp_path):
    pytest.importorskip("airflow.providers.openlineage")
    events_file = tmp_path / "lineage" / "events.jsonl"
    events_file.parent.mkdir()
    transport = json.dumps({"type": "file", "log_file_path": str(events_file), "append": True})
    lineage_env = {"AIRFLOW__OPENLINEAGE__TRANSPORT": transport, "AIRFLOW__OPENLINEAGE__NAMESPACE": "cutout-tests",
                   "AIRFLOW__OPENLINEAGE__DISABLED": "False"}
    out = tmp_path / "catalog"
    run = finish(spawn("tests.dags.batch_dags:tolerant", conf(out, 5), **lineage_env))
    assert run["state"] == "success", run.get("log")
    single = finish(spawn("tests.dags.operator_dags:stored_edit", {"out": str(tmp_path / "single")}, **lineage_env))
    assert single["state"] == "success", single.get("log")
    assert sandbox.ledger()["charges"] == 6

    complete = {e["job"]["name"]: e for e in lineage_events(events_file) if e["eventType"] == "COMPLETE"}
    batch = complete["t_batch_tolerant.batch"]
    host = sandbox.url.removeprefix("http://")
    assert [(d["namespace"], d["name"]) for d in batch["inputs"]] == [(f"http://{host}", "/samples")]
    assert [(d["namespace"], d["name"]) for d in batch["outputs"]] == [("file", str(out))]
    facet = batch["run"]["facets"]["cutout_edit"]
    assert facet["model"] == "gpt-image-1" and facet["edits"] == 5 and facet["credits"] == 20
    assert facet["counts"]["total"] == 5 and facet["requestIds"] == []

    edit = complete["t_single_stored_edit.edit"]
    assert [d["name"] for d in edit["inputs"]] == ["/samples/mug.jpg"]  # the path only: a query never shows
    stored = edit["outputs"][0]
    assert stored["namespace"] == "file" and stored["name"].startswith(str(tmp_path / "single"))
    facet = edit["run"]["facets"]["cutout_edit"]
    assert facet["edits"] == 1 and facet["credits"] == 4 and len(facet["requestIds"]) == 1
    calls = [c for c in sandbox.ledger()["calls"] if c["path"] == "edit"]
    assert facet["requestIds"][0] in {c.get("request_id") for c in calls}
