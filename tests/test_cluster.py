"""The catalog refresh on a real deployment: ``scripts/cluster.sh`` starts PostgreSQL, Redis, the API
server, scheduler, DAG processor, triggerer, two Celery workers and the sandbox on loopback; the tests
trigger the chunked catalog through the REST API as a user would, read task instances and summaries back
through it, and check every charge against the sandbox's ledger. Newest Airflow only (``-m cluster``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from airflow_provider_cutout.manifest import read_manifest
from tests.cluster_client import Cluster, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    env = {
        "CUTOUT_SANDBOX_ARGS": "--charge-hung-up --balance 1000000",
        # a killed worker's task instances are failed (and retried elsewhere) within seconds, not minutes
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    }
    with running_cluster(tmp_path_factory.mktemp("cluster"), **env) as cluster:
        yield cluster


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


def test_the_refresh_asset_triggers_the_publish_dag_under_the_scheduler(cluster):
    """The scheduler runs the catalog refresh example once unpaused; its asset event (with the run's
    counts) triggers example_cutout_publish, which publishes every stored image."""
    cluster.reset(latency=0.1)
    for dag_id in ("example_cutout_publish", "example_cutout_catalog_refresh"):
        cluster.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    refresh = cluster.first_run("example_cutout_catalog_refresh")
    assert refresh["state"] == "success" and refresh["run_type"] == "scheduled"
    publish = cluster.first_run("example_cutout_publish")
    assert publish["state"] == "success" and publish["run_type"] == "asset_triggered"
    published = cluster.call("GET", f"/dags/example_cutout_publish/dagRuns/{publish['dag_run_id']}/taskInstances/"
                             "publish/xcomEntries/return_value", params={"deserialize": True})["value"]
    assert published["published"] == 12
    events = cluster.call("GET", "/assets/events", params={"source_dag_id": "example_cutout_catalog_refresh"})
    extra = events["asset_events"][0]["extra"]
    assert extra["edited"] == 12 and extra["credits_spent"] == 48 and extra["output_dir"] == published["folder"]
    assert cluster.ledger()["charges"] == 12 and set(cluster.charges().values()) == {1}


def test_a_review_gate_nobody_answers_publishes_only_what_was_approved_after_its_timeout(cluster, tmp_path):
    """The gate waits for a reviewer (Airflow's human-in-the-loop); nobody answers, the scheduler takes its default
    after ``response_timeout``, "Publish approved only": the run succeeds and publishes nothing nobody approved,
    naming the undecided items."""
    cluster.reset(latency=0.0)
    cluster.call("PATCH", "/dags/cutout_cluster_review", json={"is_paused": False})
    before = cluster.ledger()["charges"]
    run = cluster.call("POST", "/dags/cutout_cluster_review/dagRuns",
                       json={"logical_date": None, "conf": {"n": 4, "out": str(tmp_path)}})["dag_run_id"]
    assert cluster.wait(run, dag_id="cutout_cluster_review") == "success"
    base = f"/dags/cutout_cluster_review/dagRuns/{run}/taskInstances"
    answer = cluster.call("GET", f"{base}/gate/xcomEntries/return_value", params={"deserialize": True})["value"]
    assert answer["decision"] == "Publish approved only" and answer["approved"] == [] and answer["not_stored"] == []
    assert len(answer["undecided"]) == 4 and answer["responded_by"] is None
    assert cluster.call("GET", f"{base}/publish/xcomEntries/return_value", params={"deserialize": True})["value"] == []
    assert cluster.ledger()["charges"] == before + 4 and len(read_manifest(tmp_path)) == 4


@pytest.mark.browser
def test_a_reviewer_decides_and_answers_the_gate_under_the_scheduler(cluster, browser):
    """example_cutout_review under the scheduler and the Celery workers, reviewed in Chromium: two items rejected
    in the view (one with a corrected prompt), the gate answered on its page in Airflow's UI; the publish task
    copies exactly the others; the next scheduled-by-hand run edits only the corrected item (one charge)."""
    from selenium.webdriver.common.by import By

    from tests.chromium import body_text, wait_for

    cluster.reset(latency=0.0)
    dag = "example_cutout_review"
    cluster.call("PATCH", f"/dags/{dag}", json={"is_paused": False})  # its scheduled run starts
    run = cluster.waiting_gate(dag)
    folder = Path(cluster.env["OUTPUT_DIR"]) / "review"
    keys = sorted(read_manifest(folder))
    assert len(keys) == 12 and cluster.ledger()["charges"] == 12 and set(cluster.charges().values()) == {1}

    ui = cluster.env["API_URL"]
    browser.get(f"{ui}/dags/{dag}")  # the UI's session, as a person has it
    wait_for(browser, lambda d: dag in d.page_source, timeout=60)
    view = f"{ui}/cutout-review/view?" + urlencode(
        {"dag_id": dag, "run_id": run, "task_id": "refresh_catalog", "map_index": "-1"})
    rejected = {"mug-cutout": "invert", "lamp-white": None}
    for key, prompt in rejected.items():
        browser.get(view)
        card = wait_for(browser, lambda d, k=key: d.find_element(By.CSS_SELECTOR, f"section[data-key='{k}']"))
        card.find_element(By.NAME, "note").send_keys("the product itself changed")
        if prompt:
            card.find_element(By.NAME, "prompt").send_keys(prompt)
        card.find_element(By.CSS_SELECTOR, "button[value='rejected']").click()
        wait_for(browser, lambda d, k=key: d.find_element(
            By.CSS_SELECTOR, f"section[data-key='{k}'][data-review='rejected']"))
    browser.get(f"{ui}/dags/{dag}/runs/{quote(run, safe='')}/tasks/review/required_actions")
    wait_for(browser, lambda d: next(iter(d.find_elements(
        By.XPATH, "//button[normalize-space()='Publish all but rejected']")), None), timeout=60).click()
    assert cluster.wait(run, dag_id=dag) == "success", body_text(browser)[-500:]
    base = f"/dags/{dag}/dagRuns/{run}/taskInstances"
    published = cluster.call("GET", f"{base}/publish/xcomEntries/return_value", params={"deserialize": True})["value"]
    assert sorted(published) == sorted(set(keys) - set(rejected))
    assert cluster.ledger()["charges"] == 12  # reviewing, answering and publishing cost nothing

    second = cluster.call("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None})["dag_run_id"]
    assert cluster.waiting_gate(dag, exclude=(run,)) == second
    cluster.call("PATCH", f"/dags/{dag}/dagRuns/{second}/taskInstances/review/-1/hitlDetails",
                 json={"chosen_options": ["Reject run"]})
    assert cluster.wait(second, dag_id=dag) == "failed"  # a rejected run shows as such
    assert cluster.ledger()["charges"] == 13  # only the item with a corrected prompt was edited again
    after = read_manifest(folder)
    assert after["mug-cutout"]["prompt"] == "invert" and after["lamp-white"]["review"]["decision"] == "rejected"
    cluster.call("PATCH", f"/dags/{dag}", json={"is_paused": True})


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
