"""The catalog state on its own: the item classification, the manifest log and the claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fsspec
import pytest
from airflow.sdk import ObjectStoragePath
from fsspec.implementations.memory import MemoryFileSystem
from upath import UPath

from airflow_provider_cutout.catalog.plan import classify
from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state import manifest as manifest_module
from airflow_provider_cutout.state.claims import Claims, Owner
from airflow_provider_cutout.state.manifest import Manifest, read_manifest


def folder(tmp_path):
    return ObjectStoragePath(f"{tmp_path}/")


STORED = {"status": "stored", "image_url": "https://cdn/x.png", "stored_path": "/out/x.png"}
EDITED = {"status": "edited", "image_url": "https://cdn/x.png"}


@pytest.mark.parametrize(("entry", "present", "resend", "holder", "action"), [
    (None, False, False, None, "edit"),
    (STORED, True, False, None, "skip"),
    (STORED, False, False, None, "restore"),  # delivered, file deleted since: fetch again, else edit again
    (STORED, False, False, "dead", "restore"),  # the claim of a finished run does not make it in doubt
    (STORED, False, False, "live", "wait"),  # another run may be restoring it right now
    (EDITED, False, False, None, "refetch"),
    ({"status": "failed", "image_url": None}, False, False, None, "edit"),  # charged nothing: try again
    ({"status": "in_doubt"}, False, False, None, "in_doubt"),
    ({"status": "in_doubt"}, False, True, None, "take_over"),
    (None, False, False, "live", "wait"),
    (EDITED, False, False, "live", "wait"),  # its owner is about to store it
    (STORED, True, False, "live", "skip"),
    (EDITED, False, False, "dead", "refetch"),  # its owner died after the charge was recorded
    (None, False, False, "dead", "in_doubt"),  # died with the edit claimed: maybe charged
    (None, False, True, "dead", "take_over"),
])
def test_classify(entry, present, resend, holder, action):
    assert classify(entry, file_present=present, resend_in_doubt=resend, holder=holder) == action


def entry(fp, status="stored", **more):
    return {"fingerprint": fp, "key": f"k-{fp}", "status": status, **more}


def test_two_writers_never_overwrite_each_other_and_newest_wins(tmp_path):
    a, b = Manifest(folder(tmp_path), "a"), Manifest(folder(tmp_path), "b")
    a.record(entry("1", "edited"), durable=True)
    b.record(entry("2"), durable=True)
    a.record(entry("1"), durable=True)
    b.refresh()
    assert b.get("1", "k-1")["status"] == "stored" and b.get("2", "k-2")["status"] == "stored"
    a.close()
    b.close()
    log = tmp_path / "_cutout" / "manifest"
    (snapshot,) = log.iterdir()  # a's compaction folded b's segment too; b had nothing left to fold
    assert snapshot.name.startswith("a-snapshot-")
    assert {k: e["status"] for k, e in read_manifest(tmp_path).items()} == {"k-1": "stored", "k-2": "stored"}


def test_bytes_per_record_stay_constant_and_segments_roll_up(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "ROLLUP_SEGMENTS", 8)
    log = tmp_path / "_cutout" / "manifest"
    written = []
    for n in (100, 1000):
        writer = Manifest(folder(tmp_path / str(n)), "w")
        for i in range(n):
            writer.record(entry(f"{i:06d}", url="https://cdn/" + "x" * 40), durable=True)
        files = list((tmp_path / str(n) / "_cutout" / "manifest").iterdir())
        assert len(files) <= n / 8 + 8  # a rollup per 8 segments, and the segments not rolled up yet
        before_close = writer.bytes_written
        writer.close()
        written.append(before_close / n)
    assert written[1] < written[0] * 1.1  # per record, whatever the catalog size
    assert not log.exists()


def test_corrupt_and_half_written_segments_are_reported_and_lose_nothing_else(tmp_path, caplog):
    writer = Manifest(folder(tmp_path), "w")
    for i in range(5):
        writer.record(entry(str(i)), durable=True)
    writer.close(compact=False)
    log = tmp_path / "_cutout" / "manifest"
    (log / "crashed-00000001.jsonl").write_text(json.dumps(entry("5")) + '\n{"fingerprint": "6", "sta')
    (log / "garbage-00000001.jsonl").write_bytes(b"\x00\xff not json\n[1, 2]\n")
    reader = Manifest(folder(tmp_path))
    assert sorted(fp for fp, _ in reader.entries) == ["0", "1", "2", "3", "4", "5"]
    assert [p.split(" (")[0] for p in reader.problems] == [
        "crashed-00000001.jsonl line 2: not valid JSON",
        "garbage-00000001.jsonl line 1: not valid JSON",
        "garbage-00000001.jsonl line 2: not a manifest entry",
    ]
    assert "the file's other records are kept" in caplog.text and "crashed-00000001.jsonl" in caplog.text
    compactor = Manifest(folder(tmp_path), "c")
    compactor.record(entry("7"))
    compactor.close(compact=False)
    compactor.compact()
    assert sorted(p.name.split("-")[0] for p in log.iterdir()) == ["c", "crashed", "garbage"]  # broken files stay
    assert len(Manifest(folder(tmp_path)).entries) == 7


def test_old_single_file_manifests_are_still_read(tmp_path):
    old = {"version": 1, "entries": {"fp-old": {"key": "a", "status": "stored", "stored_path": "x", "updated_at": 1}}}
    (tmp_path / "cutout-manifest-0.json").write_text(json.dumps(old))
    assert read_manifest(tmp_path)["a"]["fingerprint"] == "fp-old"
    writer = Manifest(folder(tmp_path), "w")
    writer.record(entry("fp-new"))
    writer.close()
    assert sorted(read_manifest(tmp_path)) == ["a", "k-fp-new"]


def owner(token, **more):
    return Owner(token=token, dag_id="d", run_id="r", task_id="t", host="elsewhere", pid=1, **more)


def test_claims_are_exclusive_released_and_taken_over_once(tmp_path):
    a, b, c = (Claims(folder(tmp_path), owner(t), heartbeat_timeout=60) for t in "abc")
    for claims in (a, b, c):
        claims.open()
    assert a.claim("fp") is None
    assert b.claim("fp") == a.owner and b.is_alive(a.owner)
    a.release("fp")
    assert b.claim("fp") is None and a.claim("fp") == b.owner
    b.close()  # b ends without a result for fp: in doubt for everyone else
    assert not a.is_alive(b.owner) and not c.is_alive(b.owner)
    assert a.take_over("fp", b.owner) is None
    assert c.take_over("fp", b.owner) == a.owner  # one winner only
    assert c.holder("fp") == a.owner
    a.close()
    c.close()


def test_a_take_over_killed_half_way_never_wedges_the_item(tmp_path):
    dead, taker, late = (Claims(folder(tmp_path), owner(t), heartbeat_timeout=60) for t in ("dead", "taker", "late"))
    for claims in (dead, taker, late):
        claims.open()
    assert dead.claim("fp") is None
    dead.close()  # died with the edit claimed
    (tmp_path / "_cutout" / "claims" / "fp.dead.takeover").write_bytes(b"taker")  # taker's marker, then:
    taker.close()  # killed before it rewrote the claim, which still names the dead owner
    assert late.holder("fp") == dead.owner and not late.is_alive(taker.owner)
    assert late.take_over("fp", dead.owner) is None  # took over from the taker that died half-way
    assert late.holder("fp") == late.owner
    other = Claims(folder(tmp_path), owner("other"), heartbeat_timeout=60)
    other.open()
    assert other.take_over("fp", dead.owner) == late.owner  # a live taker holds it: wait for it
    late.close()
    assert other.take_over("fp", dead.owner) == late.owner  # one that finished holds it too: look again
    assert other.take_over("fp", late.owner) is None  # only a take-over from the owner the claim names
    other.close()


def test_liveness_earlier_try_dead_process_and_stale_heartbeat(tmp_path):
    me = Claims(folder(tmp_path), Owner(token="me", dag_id="d", run_id="r", task_id="t", try_number=2,
                                        host="h1", pid=os.getpid()))
    assert not me.is_alive(Owner(token="x", dag_id="d", run_id="r", task_id="t", try_number=1, host="h2"))
    me = Claims(folder(tmp_path), Owner(token="me", dag_id="d", run_id="r2", task_id="t", host="h1", pid=os.getpid()))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not me.is_alive(Owner(token="y", host="h1", pid=int(dead.stdout)))  # this host, process gone
    other = Claims(folder(tmp_path), owner("z"), heartbeat_timeout=0.5)
    other.open()
    assert me.is_alive(other.owner)
    other._stop.set()  # the heartbeat stops as it would on a frozen host
    other._thread.join()
    fresh = Claims(folder(tmp_path), owner("w"), heartbeat_timeout=0.5)
    import time

    time.sleep(0.6)
    assert not fresh.is_alive(other.owner)


def test_a_pid_counts_only_in_its_own_namespace_and_fresh_heartbeats_stay(tmp_path):
    import dataclasses

    mine = Owner.of_task(None)
    assert mine.boot_id and mine.pid_ns.startswith("pid:")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    twin = dataclasses.replace(mine, token="twin", pid=dead)  # this host, this namespace, process gone
    ghost = dataclasses.replace(mine, token="ghost", pid=dead, pid_ns="pid:[4026500000]")  # another container
    for other in (twin, ghost):  # both beating just now
        beating = Claims(folder(tmp_path), other)
        beating.open()
        beating._stop.set()
        beating._thread.join()
    me = Claims(folder(tmp_path), mine)
    assert not me.is_alive(twin) and me.is_alive(ghost)
    me.forget_dead_owners()
    assert sorted(p.name for p in (tmp_path / "_cutout" / "owners").iterdir()) == ["ghost.json", "twin.json"]


def test_a_store_without_exclusive_create_fails_loudly(tmp_path):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from upath import UPath

    class Overwriting(MemoryFileSystem):
        protocol = "overwriting"

        def _open(self, path, mode="rb", **kwargs):
            return super()._open(path, mode.replace("x", "w"), **kwargs)

    fsspec.register_implementation("overwriting", Overwriting, clobber=True)
    claims = Claims(UPath("overwriting://bucket/out/"), owner("a"))
    with pytest.raises(CatalogStateError, match="does not refuse a second exclusive create"):
        claims.open()


def test_a_skewed_clock_never_lets_in_doubt_hide_a_later_stored_result(tmp_path):
    import time

    ahead = Manifest(folder(tmp_path), "ahead", clock=lambda: time.time() + 3600)  # a host an hour ahead
    unaware = Manifest(folder(tmp_path), "unaware")  # opened before that record: it never reads it
    ahead.record(entry("1", "in_doubt"), durable=True)
    ahead.close()
    later = Manifest(folder(tmp_path), "later")
    assert later.get("1", "k-1")["status"] == "in_doubt"
    later.record(entry("1", "stored"), durable=True)  # this run read the in-doubt record, then stored it
    later.close()
    unaware.record(entry("2", "in_doubt"), durable=True)
    unaware.close()
    ahead = Manifest(folder(tmp_path), "ahead2", clock=lambda: time.time() + 3600)
    ahead.record(entry("2", "stored"), durable=True)
    ahead.close()
    reader = Manifest(folder(tmp_path))
    assert reader.get("1", "k-1")["status"] == "stored"  # seq 2 over seq 1, whatever the clocks say
    assert read_manifest(folder(tmp_path))["k-1"]["status"] == "stored"
    slow = Manifest(folder(tmp_path), "slow", clock=lambda: 0.0)  # two writers that never read each other:
    fast = Manifest(folder(tmp_path), "fast", clock=lambda: time.time() + 3600)  # a tie in seq
    slow.record(entry("3", "stored"), durable=True)
    fast.record(entry("3", "in_doubt"), durable=True)
    slow.close()
    fast.close()
    assert Manifest(folder(tmp_path)).get("3", "k-3")["status"] == "stored"  # a stored result outranks in doubt


def test_the_log_survives_a_store_that_fails_writes_and_logs_what_it_cannot_keep(tmp_path, caplog):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from upath import UPath

    failures = {"left": 0}

    class Flaky(MemoryFileSystem):  # an object store answering 503 Slow Down to some writes
        protocol = "flaky"

        def _open(self, path, mode="rb", **kwargs):
            if "w" in mode and "/manifest/" in path and failures["left"] > 0:
                failures["left"] -= 1
                raise OSError("503 Slow Down")
            return super()._open(path, mode, **kwargs)

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    out = UPath(f"flaky://bucket/{tmp_path.name}/")
    waits: list[float] = []
    writer = Manifest(out, "w", sleep=waits.append)
    failures["left"] = 3
    writer.record(entry("1", "edited", image_url="https://cdn/1.png", request_id="req-1"), durable=True)
    assert waits == [0.4, 0.8, 1.6]  # retried with backoff, never lost
    writer.close(compact=False)
    assert Manifest(out).get("1", "k-1")["request_id"] == "req-1"

    failures["left"] = 99  # a store that is gone for good: the paid result reaches the task log
    doomed = Manifest(out, "d", sleep=waits.append)
    with pytest.raises(OSError, match="cannot write the manifest"):
        doomed.record(entry("2", "edited", image_url="https://cdn/2.png", request_id="req-2"), durable=True)
    assert "could not record item 'k-2'" in caplog.text
    assert "req-2" in caplog.text and "https://cdn/2.png" in caplog.text
    with pytest.raises(OSError, match="cannot write the manifest"):  # a result charged after the store gave up
        doomed.record(entry("3", "edited", image_url="https://cdn/3.png", request_id="req-3"), durable=True)
    assert "could not record item 'k-3'" in caplog.text and "req-3" in caplog.text


def catalog_log(out, n=3000):
    """A compacted log of ``n`` items in the folder ``out`` (a local path or a ``UPath``), two of which (``item-a``,
    ``item-b``) share one edit, and ``item-5`` edited twice (an older photo, then a newer one)."""
    writer = Manifest(out if isinstance(out, UPath) else folder(out), "w")
    for i in range(n):
        writer.record(entry(f"fp{i:05d}", key=f"item-{i}", stored_path=f"/out/item-{i}.png"))
    writer.record(entry("fp-old-5", key="item-5", stored_path="/out/item-5.png"))
    for key in ("item-a", "item-b"):
        writer.record(entry("shared", key=key, stored_path=f"/out/{key}.png"))
    writer.close(compact=False)
    writer.compact()
    return out / "_cutout" / "manifest"


def test_a_reader_of_a_few_keys_reads_only_their_records_and_their_edits_siblings(tmp_path, monkeypatch):
    log = catalog_log(tmp_path)
    (snapshot,) = log.glob("*.jsonl")
    assert (log / f"{snapshot.name}.idx").exists()
    read: list[int] = []

    def counted(path, ranges):
        found = manifest_module.read_ranges.__wrapped__(path, ranges)
        read.extend(len(chunk) for chunk in found)
        return found

    counted.__wrapped__ = manifest_module.read_ranges
    monkeypatch.setattr(manifest_module, "read_ranges", counted)
    full = Manifest(folder(tmp_path))
    scoped = Manifest(folder(tmp_path), keys=["item-5", "item-a", "item-2999"])
    assert sorted({key for _, key in scoped.entries}) == ["item-2999", "item-5", "item-a"]
    assert len(scoped.entries) == 4  # item-5 has two edits
    assert sum(read) < snapshot.stat().st_size / 500  # its lines, not the file
    assert scoped.siblings("shared") == [full.get("shared", "item-a")]  # item-b's edit is not in scope yet
    scoped.include(["shared", "fp00005"])
    assert sorted(e["key"] for e in scoped.siblings("shared")) == ["item-a", "item-b"]
    for fp, key in full.entries:
        if key in ("item-5", "item-a", "item-2999") or fp == "shared":
            assert scoped.get(fp, key) == full.get(fp, key)
    newer = Manifest(folder(tmp_path), "newer")  # a small segment written later: read whole by a refresh
    newer.record(entry("fp-new-5", key="item-5"), durable=True)
    newer.close(compact=False)
    scoped.refresh()
    assert scoped.get("fp-new-5", "item-5") is not None


def test_a_scoped_writer_compacts_every_record_not_only_its_share(tmp_path):
    log = catalog_log(tmp_path)
    writer = Manifest(folder(tmp_path), "chunk", keys=["item-7"])
    assert len(writer.entries) == 1
    writer.record(entry("fp-new-7", key="item-7"), durable=True)
    writer.close(compact=False)
    writer.compact()
    (snapshot,) = log.glob("*.jsonl")
    assert snapshot.name.startswith("chunk-snapshot-") and (log / f"{snapshot.name}.idx").exists()
    assert sorted(p.name for p in log.iterdir()) == sorted([snapshot.name, f"{snapshot.name}.idx"])  # old index gone
    assert len(Manifest(folder(tmp_path)).entries) == 3000 + 3 + 1  # nothing folded away unread


@pytest.mark.parametrize("damage", ["shifted", "other file", "unordered", "not json"])
def test_an_index_that_does_not_describe_its_file_makes_the_reader_read_it_whole(tmp_path, caplog, damage):
    log = catalog_log(tmp_path)
    (snapshot,) = log.glob("*.jsonl")
    index_path = log / f"{snapshot.name}.idx"
    index = json.loads(index_path.read_text())
    if damage == "shifted":  # each key pointing at its neighbour's line
        index["keys"] = index["keys"][1:] + index["keys"][:1]
    elif damage == "other file":
        index["ends"] = [end + 1 for end in index["ends"]]
    elif damage == "unordered":
        index["ends"][:2] = [index["ends"][1], index["ends"][0]]
    index_path.write_text("{" if damage == "not json" else json.dumps(index))
    scoped = Manifest(folder(tmp_path), keys=["item-5"])
    assert scoped.get("fp00005", "item-5") == Manifest(folder(tmp_path)).get("fp00005", "item-5")
    assert scoped.get("fp-old-5", "item-5") is not None
    assert "read whole" in caplog.text


def test_a_large_file_without_an_index_is_indexed_by_the_first_chunk_that_reads_it(tmp_path):
    log = catalog_log(tmp_path)
    (snapshot,) = log.glob("*.jsonl")
    index = log / f"{snapshot.name}.idx"
    written = index.read_bytes()
    index.unlink()  # a log of 0.2, or a writer that died between the two files
    reader = Manifest(folder(tmp_path), keys=["item-5"])  # a read-only reader writes nothing
    assert not index.exists() and len(reader.entries) > 3000
    first = Manifest(folder(tmp_path), "chunk-0", keys=["item-5"])
    assert len(first.entries) > 3000 and index.read_bytes() == written  # read whole, indexed for the next
    second = Manifest(folder(tmp_path), "chunk-1", keys=["item-6"])
    assert len(second.entries) == 1
    (log / "gone-snapshot-1.jsonl.idx").write_bytes(written)  # an index whose file was compacted away
    second.record(entry("fp-new-6", key="item-6"), durable=True)
    second.close(compact=False)
    second.compact()
    assert sorted(p.suffix for p in log.iterdir()) == [".idx", ".jsonl"]


class Bucket(MemoryFileSystem):  # an object store: not local, so ranged reads go through fs.cat_ranges
    protocol = "bucket"


fsspec.register_implementation("bucket", Bucket, clobber=True)


def test_on_an_object_store_a_snapshot_compacted_away_under_a_chunk_is_read_again(tmp_path, monkeypatch):
    out = UPath(f"bucket://b/{tmp_path.name}-1/")
    catalog_log(out)
    chunk = Manifest(out, "chunk", keys=["item-a"])
    assert len(chunk.siblings("shared")) == 1
    other = Manifest(out, "other-chunk")  # another chunk ends and compacts while this one checks its sources
    other.record(entry("fp-x", key="item-x"), durable=True)
    other.close(compact=False)
    other.compact()
    chunk.include(["shared"])  # the snapshot it read from is gone: the new one is read
    assert sorted(e["key"] for e in chunk.siblings("shared")) == ["item-a", "item-b"]

    out = UPath(f"bucket://b/{tmp_path.name}-2/")
    catalog_log(out)
    read_ranges, compacted = manifest_module.read_ranges, []

    def compacted_meanwhile(path, ranges):  # right after this reader listed the log and read the index
        if not compacted:
            compacted.append(Manifest(out, "other").compact())
        return read_ranges(path, ranges)

    monkeypatch.setattr(manifest_module, "read_ranges", compacted_meanwhile)
    assert Manifest(out, "chunk", keys=["item-7"]).get("fp00007", "item-7") is not None


def test_a_file_lookup_that_fails_is_not_taken_for_a_missing_file(tmp_path):
    from airflow_provider_cutout.state.io import existing, file_exists

    failing = {"on": False}

    class Flaky(MemoryFileSystem):  # a store that answers 503 to a lookup now and then
        protocol = "flakyhead"

        def info(self, path, **kwargs):
            if failing["on"]:
                raise OSError("503 Slow Down")
            return super().info(path, **kwargs)

    fsspec.register_implementation("flakyhead", Flaky, clobber=True)
    out = UPath(f"flakyhead://b/{tmp_path.name}/")
    (out / "item-7.png").write_bytes(b"png")
    assert existing(out, ["item-7.png", "item-8.png"], 4) == {"item-7.png"}
    assert file_exists(out / "item-7.png") and not file_exists(out / "item-8.png")
    failing["on"] = True
    with pytest.raises(OSError, match="503"):  # undecided: "missing" would restore it, maybe paid again
        existing(out, ["item-7.png"], 4)
    with pytest.raises(OSError, match="503"):  # fsspec's exists() would say False
        file_exists(out / "item-7.png")
    assert not (out / "item-7.png").exists()  # what the run asked before: a failed lookup taken for "missing"
    failing["on"] = False
    (tmp_path / "Item-8.png").write_bytes(b"png")  # a local folder is listed: names are exact about case
    assert existing(folder(tmp_path), ["Item-8.png", "item-8.png"], 4) == {"Item-8.png"}
    assert file_exists(folder(tmp_path) / "Item-8.png") and not file_exists(folder(tmp_path) / "Item-8.png" / "x")


@pytest.mark.parametrize("other", ["edited", "in_doubt"])
def test_a_stored_file_another_charged_edit_of_its_key_may_have_overwritten_is_judged_by_its_digest(tmp_path, other):
    """Money case 1 and its follow-up: another edit of the key was charged and never recorded stored (its run was
    killed after the rename; or a later run's fetch of it ended in doubt): the older stored entry holds its file
    only when the file's digest is its own, whatever the entries' clocks say."""
    import hashlib

    from airflow_provider_cutout.catalog.planning import Holds, _charged_unstored

    (tmp_path / "k.png").write_bytes(b"the other edit")
    mine = {"key": "k", "fingerprint": "f1", "status": "stored", "stored_path": f"{tmp_path}/k.png",
            "sha256": hashlib.sha256(b"my edit").hexdigest(), "written_at": 2e9}  # newest by its clock
    theirs = {"key": "k", "fingerprint": "f2", "status": other, "image_url": "https://cdn/2.png"}
    holds = Holds(folder(tmp_path), {"k.png": 2e9}, _charged_unstored([mine, theirs]))
    assert not holds(mine)  # restored, never kept as done
    (tmp_path / "k.png").write_bytes(b"my edit")
    assert holds(mine)
    legacy = {**mine, "sha256": None}  # from before digests were kept: nothing to check, trusted as before
    assert Holds(folder(tmp_path), {"k.png": 2e9}, _charged_unstored([legacy, theirs]))(legacy)


def test_a_charged_record_never_replaces_the_record_of_the_edit_stored_at_a_file_path(tmp_path):
    """The single edit at a file output_path keeps one stored record per target: the charged record of a new edit
    is a file of its own, so a failed store of the new edit leaves the old one's record (and a revert is free)."""
    from airflow_provider_cutout.state.records import (
        find_stored_edit,
        forget_charged_edit,
        read_record,
        remember_charged_edit,
        remember_stored_edit,
    )

    target = f"{tmp_path}/hero.png"
    (tmp_path / "hero.png").write_bytes(b"F")
    remember_stored_edit(target, "F", {"id": 1, "image_url": "https://cdn/f.png", "stored_path": target})
    remember_charged_edit(target, "G", {"id": 2, "image_url": "https://cdn/g.png"})
    assert find_stored_edit(target, "F")["id"] == 1  # F's record stands
    assert read_record(target, "G") is None and read_record(target, "G", charged=True)["id"] == 2
    forget_charged_edit(target, "G")
    assert read_record(target, "G", charged=True) is None


def test_chunks_compare_keys_with_each_other_chunks_newest_list(tmp_path):
    """A chunk cleared alone still sees the lists of the chunks that were not run again; a chunk that runs again
    in a later clear replaces its own list."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.chunk_keys import other_chunks, run_folder

    runs = run_folder(ObjectStoragePath(f"{tmp_path}/"), "d.batch", "manual_1")
    assert other_chunks(runs, 0, 0, {"k": "f1"}) == {}
    assert other_chunks(runs, 1, 0, {"k": "f2", "j": "f3"}) == {"k": 0}  # k listed twice
    assert other_chunks(runs, 1, 1, {"k": "f2"}) == {"k": 0}  # chunk 1 cleared alone: chunk 0's list still counts
    assert other_chunks(runs, 0, 2, {"j": "f3"}) == {}  # chunk 0 in a later clear, chunked otherwise: k moved
    assert other_chunks(runs, 1, 2, {"k": "f2"}) == {}  # and chunk 1 keeps k alone
    assert other_chunks(runs, 1, 2, {"k": "f2"}) == {}  # a retry reads its own list as its own
