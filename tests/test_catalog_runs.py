"""The catalog state under real conditions: overlapping DAG runs in separate processes on a local folder
and on S3 (moto's server on loopback), chunks that share items, and SIGKILL at random moments, every
time checked against the sandbox's ledger per request fingerprint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cutout.manifest import read_manifest
from tests.conftest import charges_per_edit, hand_over
from tests.run_dag import finish, spawn

pytestmark = pytest.mark.e2e
N = 200


def sent_fingerprint(entry: dict[str, Any]) -> str:
    """A manifest entry's edit as the sandbox's ledger keys it: by the payload sent, without source versions."""
    from airflow_provider_cutout.sandbox.state import fingerprint

    return fingerprint({"prompt": entry["prompt"], "model": entry["model"], "aspectRatios": entry["aspect_ratio"],
                        "imageUrl": entry["image_urls"]})


def charges(sandbox) -> dict[str, int]:
    return {fp: v["charges"] for fp, v in sandbox.ledger()["by_fingerprint"].items()}


def conf(out: str, n: int = N) -> dict[str, Any]:
    return {"n": n, "out": out, "changed": "", "invalid": False}


@pytest.fixture(params=["local", "s3", "gs", "abfs"])
def output(request, tmp_path):
    """An output folder on a local disk, on S3, on GCS or on Azure Blob Storage (tests/stores.py), and a function
    listing the item files in it."""
    if request.param == "local":
        return str(tmp_path / "catalog"), lambda: sorted(p.name for p in (tmp_path / "catalog").glob("item-*"))
    store = request.getfixturevalue(request.param)
    prefix = f"runs/{tmp_path.name}"
    return store.uri(prefix), lambda: sorted(k.rsplit("/", 1)[-1] for k in store.keys(prefix + "/") if "/item-" in k)


def test_two_overlapping_runs_then_a_third_charge_every_item_once(sandbox, airflow_db, output):
    out, item_files = output
    sandbox.reset(balance=10_000)
    sandbox.server.state.config.latency = 0.1
    first, second = (finish(p) for p in [spawn("tests.dags.batch_dags:overlapping", conf(out)) for _ in range(2)])
    assert first["state"] == second["state"] == "success", (first.get("log"), second.get("log"))
    runs = [first["summaries"][0], second["summaries"][0]]
    assert sum(r["edited"] for r in runs) == N and all(r["edited"] > 0 for r in runs)  # they really overlapped
    for r in runs:
        assert r["edited"] + r["skipped"] + r["by_other_runs"] + r["recovered"] == N and r["in_doubt"] == 0
    assert len(charges(sandbox)) == N and set(charges(sandbox).values()) == {1}
    assert item_files() == sorted(f"item-{i}.png" for i in range(N))

    third = finish(spawn("tests.dags.batch_dags:overlapping", conf(out)))
    assert third["state"] == "success" and third["summaries"][0]["skipped"] == N
    assert sandbox.ledger()["charges"] == N
    entries = read_manifest(out)
    assert len(entries) == N and {e["status"] for e in entries.values()} == {"stored"}


def test_overlapping_runs_in_two_pid_namespaces_of_one_host(sandbox, airflow_db, tmp_path):
    """Workers in containers with host networking (or one fixed host name) share a host name, not a PID
    namespace: one run here, one under unshare, where PIDs mean other processes. Neither takes the other
    for dead: every item is charged once, none is in doubt."""
    sandbox.reset(balance=10_000)
    sandbox.server.state.config.latency = 0.1
    out, n = str(tmp_path / "catalog"), 40
    container = ("unshare", "--pid", "--fork", "--mount-proc")  # CI runs as root
    procs = [spawn("tests.dags.batch_dags:overlapping", conf(out, n), prefix=container),
             spawn("tests.dags.batch_dags:overlapping", conf(out, n))]
    runs = [finish(p) for p in procs]
    assert [r["state"] for r in runs] == ["success", "success"], [r.get("log") for r in runs]
    summaries = [r["summaries"][0] for r in runs]
    assert all(s["in_doubt"] == 0 for s in summaries) and all(s["edited"] > 0 for s in summaries)
    assert len(charges(sandbox)) == n and set(charges(sandbox).values()) == {1}
    assert sorted(p.name for p in (tmp_path / "catalog").glob("item-*")) == sorted(f"item-{i}.png" for i in range(n))


def test_overlapping_runs_of_chunks_that_share_items(sandbox, airflow_db, tmp_path):
    sandbox.reset(balance=10_000)
    sandbox.server.state.config.latency = 0.05
    n = 40  # chunks of 21 and 20 items: items 0 and 20 are in both chunks of each run
    runs = [finish(p) for p in [spawn("tests.dags.batch_dags:shared_chunks", conf(str(tmp_path), n))
                                for _ in range(2)]]
    assert [r["state"] for r in runs] == ["success", "success"], [r.get("log") for r in runs]
    summaries = [s for r in runs for s in r["summaries"]]
    assert sum(s["edited"] for s in summaries) == n
    assert sum(s["skipped"] + s["by_other_runs"] for s in summaries) == 2 * (n + 2) - n
    assert len(charges(sandbox)) == n and set(charges(sandbox).values()) == {1}


def wait_for_claims(owners: Path, proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    """Wait until the run in ``proc`` has opened its claims (its heartbeat file names its process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for beat in owners.glob("*.json") if owners.exists() else ():
            try:
                if json.loads(beat.read_text())["owner"]["pid"] == proc.pid:
                    return True
            except (OSError, ValueError):
                continue
        time.sleep(0.01)
    return False


@pytest.mark.timeout(600)  # twenty DAG runs, each a process of its own that Airflow starts
def test_sigkill_at_20_random_moments_never_charges_twice_without_consent(sandbox, airflow_db, tmp_path):
    """Twenty runs of one 300-item catalog, each killed with SIGKILL at a random moment (three during
    start-up and planning, the others while edits are in flight); the sandbox charges edits whose client
    hung up, as a service that finishes the work would. No item is ever charged twice, no run that
    reports success lacks a result; then a run with resend_in_doubt=True stores every item."""
    n, seed = 300, int(os.environ.get("CUTOUT_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    sandbox.reset(balance=100_000)
    sandbox.server.state.config.latency = 0.1
    sandbox.server.state.config.charge_hung_up = True
    owners = tmp_path / "_cutout" / "owners"
    ended_on_their_own = 0
    for kill in range(20):
        proc = spawn("tests.dags.batch_dags:killed", conf(str(tmp_path), n))
        if kill < 3:
            time.sleep(rng.uniform(0.5, 3.0))  # start-up, parsing, planning
        elif wait_for_claims(owners, proc):
            time.sleep(rng.uniform(0.0, 0.8))  # claims, edits in flight, storing, recording
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            ended_on_their_own += 1
            run = finish(proc)
            stored = read_manifest(tmp_path)
            assert run["state"] == "failed" or sum(e["status"] == "stored" for e in stored.values()) == n
        # (<= 1: a kill during the first edit leaves only its call in flight, charged once the sandbox finishes it)
        assert max(charges(sandbox).values(), default=0) <= 1, f"an item was charged twice (seed {seed})"
    ledger = sandbox.ledger()
    assert any(c.get("hung_up") for c in ledger["calls"]), f"no kill hit an edit in flight (seed {seed})"

    cautious = finish(spawn("tests.dags.batch_dags:killed", conf(str(tmp_path), n)))
    # the ledger keys charges by what was sent (prompt, model, ratio, URLs); our fingerprints add the versions
    doubtful = {sent_fingerprint(e) for e in read_manifest(tmp_path).values() if e["status"] == "in_doubt"}
    assert cautious["state"] == ("failed" if doubtful else "success")
    assert max(charges(sandbox).values()) == 1 and len(charges(sandbox)) <= n

    hand_over(tmp_path)  # another DAG (the same catalog with resend_in_doubt) takes the folder over
    final = finish(spawn("tests.dags.batch_dags:killed_resend", conf(str(tmp_path), n)))
    assert final["state"] == "success", f"seed {seed}"
    entries = read_manifest(tmp_path)
    assert len(entries) == n and {e["status"] for e in entries.values()} == {"stored"}
    assert sorted(p.name for p in tmp_path.glob("item-*")) == sorted(f"item-{i}.png" for i in range(n))
    paid = charges(sandbox)
    assert len(paid) == n and {fp for fp, c in paid.items() if c > 1} <= doubtful  # twice only with consent
    assert all(c <= 2 for c in paid.values())
    print(f"seed {seed}: {ended_on_their_own} runs ended before their kill, {len(doubtful)} items in doubt, "
          f"{sum(c > 1 for c in paid.values())} of them charged again with resend_in_doubt=True")


def test_gallery_on_s3_shows_results_by_signed_urls_kept_out_of_xcom(sandbox, airflow_db, tmp_path, s3):
    import re

    import requests

    prefix = f"runs/{tmp_path.name}"
    run = finish(spawn("tests.dags.batch_dags:signed_gallery", conf(f"s3://aws_default@catalog/{prefix}", 3)))
    assert run["state"] == "success", run.get("log")
    assert sandbox.ledger()["charges"] == 3 and set(charges(sandbox).values()) == {1}
    assert run["summaries"][0]["gallery"].endswith(f"{prefix}/cutout-gallery.html")
    page = s3.client.get_object(Bucket="catalog", Key=f"{prefix}/cutout-gallery.html")["Body"].read().decode()
    signed = re.findall(r"<img class='result' src='([^']+)' alt='result of", page)
    assert len(signed) == 3 and all("Signature=" in url for url in signed)
    for url in signed:  # a browser can fetch them: moto checks the signature
        answer = requests.get(url.replace("&amp;", "&"), timeout=10)
        assert answer.status_code == 200 and answer.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Signature=" not in json.dumps(run)  # the summary in XCom names the page, not its links


def test_a_rerun_of_unchanged_s3_sources_lists_their_folder_and_reads_no_object(sandbox, airflow_db, tmp_path, s3):
    """2,000 catalog photos in a bucket: the re-run learns their versions from a listing of their folder (at most
    5 listing requests, counted by moto's own request log) and asks no object for its version; a replaced photo
    is then read, and edited again, alone."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_cutout.sandbox import edits

    n, folder = 2000, f"src/{tmp_path.name}"
    photo = edits.sample_image("mug", 1280, 720, "jpg")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.client.put_object(Bucket="catalog", Key=f"{folder}/p{i:04d}.jpg", Body=photo),
                      range(n)))
    conf = {"out": str(tmp_path / "out"), "folder": folder, "n": n}
    sandbox.reset(balance=10_000)
    sandbox.server.state.config.latency_only = True  # no image work: this test is about the source checks
    try:
        first = finish(spawn("tests.dags.batch_dags:s3_catalog", conf))
        assert first["state"] == "success", first.get("log")
        assert first["summaries"][0]["edited"] == n and sandbox.ledger()["charges"] == n
        runs: list[dict[str, Any]] = []
        calls = s3.requests_during(lambda: runs.append(finish(spawn("tests.dags.batch_dags:s3_catalog", conf))))
        assert runs[0]["state"] == "success" and runs[0]["summaries"][0]["skipped"] == n
        listings = [path for method, path in calls if "list-type=2" in path or "prefix=" in path]
        objects = [path for method, path in calls if f"{folder}/p" in path.split("?")[0]]
        assert 1 <= len(listings) <= 5 and objects == [], (listings[:3], objects[:3])
        replaced = edits.sample_image("lamp", 1280, 720, "jpg")
        s3.client.put_object(Bucket="catalog", Key=f"{folder}/p0007.jpg", Body=replaced)
        runs.clear()
        calls = s3.requests_during(lambda: runs.append(finish(spawn("tests.dags.batch_dags:s3_catalog", conf))))
        assert runs[0]["state"] == "success", runs[0].get("log")
        assert (runs[0]["summaries"][0]["edited"], runs[0]["summaries"][0]["skipped"]) == (1, n - 1)
        objects = [path for method, path in calls if f"{folder}/p" in path.split("?")[0]]
        assert {path.split("?")[0].rsplit("/", 1)[-1] for path in objects} == {"p0007.jpg"}  # the changed one only
        # each send is charged once (signed URLs differ per signing, so each send is a payload of its own)
        assert sandbox.ledger()["charges"] == n + 1 and charges_per_edit(sandbox) == [1] * (n + 1)
    finally:
        sandbox.server.state.config.latency_only = False


def test_a_chunk_on_s3_reads_its_records_by_ranges_and_looks_up_its_files(s3, tmp_path):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.io import existing
    from airflow_provider_cutout.state.manifest import Manifest

    out = ObjectStoragePath(f"s3://aws_default@catalog/runs/{tmp_path.name}/")
    writer = Manifest(out, "earlier")
    for i in range(1500):
        writer.record({"fingerprint": f"fp-{i:05d}", "key": f"item-{i}", "status": "stored", "credits": 4,
                       "stored_path": str(out / f"item-{i}.png")})
    writer.record({"fingerprint": "fp-00007", "key": "item-b", "status": "stored"})  # item-7's edit, shared
    writer.close(compact=False)
    writer.compact()
    (snapshot,) = [k for k in s3.keys(f"runs/{tmp_path.name}/_cutout/manifest/") if k.endswith(".jsonl")]
    chunk: list[Manifest] = []
    calls = s3.requests_during(lambda: chunk.append(Manifest(out, "chunk", keys=["item-7", "item-9"])))
    assert sorted(key for _, key in chunk[0].entries) == ["item-7", "item-9"]
    gets = [path for method, path in calls if method == "GET" and path.startswith("catalog/" + snapshot)]
    assert gets == [f"catalog/{snapshot}.idx", f"catalog/{snapshot}", f"catalog/{snapshot}"]  # a ranged GET a line
    chunk[0].include(["fp-00007"])
    assert sorted(e["key"] for e in chunk[0].siblings("fp-00007")) == ["item-7", "item-b"]
    whole = Manifest(out)
    assert all(chunk[0].get(fp, key) == whole.get(fp, key) for fp, key in chunk[0].entries)

    (out / "item-7.png").write_bytes(b"png")
    assert existing(out, ["item-7.png"], 4) == {"item-7.png"}  # the listing is now cached by s3fs
    (out / "item-9.png").write_bytes(b"png")  # written by another worker since
    assert existing(out, ["item-7.png", "item-9.png", "item-8.png"], 4) == {"item-7.png", "item-9.png"}
