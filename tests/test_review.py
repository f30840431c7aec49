"""The review view's page (``catalog.review``) and the plugin that serves it: filters, search, pages and counts
over manifest entries; every value escaped; the plugin light to import (Airflow loads plugins in every task).
The view served by a real API server, in Chromium, is in test_browser.py."""

from __future__ import annotations

import re
import subprocess
import sys

from airflow_provider_cutout.api.urls import browser_source
from airflow_provider_cutout.catalog.gallery import gallery_items, item_anchor
from airflow_provider_cutout.catalog.review import ReviewQuery, render_review, select, view_href


def entries(n: int = 130) -> list[dict]:
    found = [{"key": f"item-{i:03d}", "fingerprint": f"fp{i}", "status": "stored", "credits": 4, "prompt": "grayscale",
              "image_urls": [f"https://cdn.example/p{i}.jpg"], "stored_path": f"/out/item-{i:03d}.png",
              "updated_at": 100.0 + i} for i in range(n)]
    if n > 9:
        found[7].update(status="failed", credits=0, stored_path=None, error="FailedEditError: <b>no</b>")
        found[8].update(status="in_doubt", stored_path=None)
        found[9].update(status="edited", stored_path=None)
    return found


def page(items, query=None, since=0.0, per_page=60, **extra):
    return render_review(items, query=query or ReviewQuery(), title="/out",
                         href=view_href("/cutout-review/view", {"dag_id": "d"}),
                         image_url=lambda name: f"/img?name={name}", hidden={"dag_id": "d"}, since=since,
                         per_page=per_page, source_url=browser_source, **extra)


def test_items_that_need_a_look_come_first_and_filters_count_them():
    items = gallery_items(entries())
    assert [e["status"] for e in items[:3]] == ["failed", "in_doubt", "edited"]
    html = page(items)
    for label, count in (("all", 130), ("failed", 1), ("in doubt", 1), ("paid, not stored", 1), ("stored", 127)):
        assert f">{label}: {count}</a>" in html, label
    assert "credits recorded: <b>516</b>" in html  # 4 each, but for the failed edit (free); in doubt counts
    assert [e["key"] for e in select(items, ReviewQuery("failed"))] == ["item-007"]
    assert sorted(e["key"] for e in select(items, ReviewQuery(search="ITEM-12"))) == [f"item-12{i}" for i in range(10)]
    assert len(select(items, ReviewQuery("this_run"), since=200.0)) == 30  # updated since the task started
    assert select(items, ReviewQuery("this_run")) == []  # start unknown: nothing is claimed for this run


def test_pages_and_their_links():
    items = gallery_items(entries())
    first, last = page(items), page(items, ReviewQuery(page=3))
    assert first.count("<section class='item") == 60 and last.count("<section class='item") == 10
    assert "page 1 of 3 (130 items)" in first and "previous" not in first
    assert "href='/cutout-review/view?dag_id=d&amp;page=2'" in first
    assert "page 3 of 3" in page(items, ReviewQuery(page=99))  # past the end: the last page
    assert ReviewQuery.parse("nonsense", "  a  ", "x") == ReviewQuery("all", "a", 1)
    assert ReviewQuery.parse("failed", None, "0") == ReviewQuery("failed", "", 1)


def test_every_value_from_the_catalog_or_the_api_is_escaped_and_only_public_https_sources_are_loaded():
    hostile = entries(3)
    hostile[0].update(key="<script>alert(1)</script>", prompt="<img src=x onerror=alert(2)>")
    hostile[1].update(key="javascript:alert(3)", status="failed", error="<script>alert(4)</script>")
    hostile[2].update(image_urls=["javascript:alert(5)"], stored_path="/out/'><img src=x onerror=alert(6)>.png")
    hostile[1].update(image_urls=["https://b.example/p.jpg?X-Amz-Signature=abc&X-Amz-Credential=k"])
    html = page(gallery_items(hostile), ReviewQuery(search="<script>"))
    body = page(gallery_items(hostile))
    for text in (html, body):
        assert "<script" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;script&gt;alert(4)&lt;/script&gt;" in body
    assert "value='&lt;script&gt;'" in html  # the search box holds the search, escaped
    assert not re.search(r"src='(http:|javascript:)|Signature", body)  # no script, no signed URL shown
    assert "src='https://cdn.example/p0.jpg'" in body  # a public https photo: the browser loads it itself
    assert "source not shown here: b.example" in body and "source not shown here: javascript:alert(5)" in body
    assert "src='/img?name=&#x27;&gt;&lt;img src=x onerror=alert(6)&gt;.png'" in body  # the attribute stays shut


def test_the_plugin_module_is_light_and_registers_the_view():
    """Airflow imports every plugin in every task process: the app (FastAPI, the auth manager) stays out."""
    code = ("import sys; from airflow_provider_cutout.plugins.review import CutoutReviewPlugin as P; "
            "print('fastapi' in sys.modules, 'airflow_provider_cutout.plugins.review_app' in sys.modules, "
            "P.external_views[0]['destination'], P.external_views[0]['href'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["False", "False", "task_instance"]
    # relative: right under an API server at a sub-path too (the UI resolves it against its <base href>)
    assert out[3] == "cutout-review/view?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}"
    from airflow_provider_cutout.plugins.review import CutoutReviewPlugin

    (app,) = CutoutReviewPlugin().fastapi_apps
    assert app["url_prefix"] == "/cutout-review" and {r.path for r in app["app"].routes} >= {"/view", "/image"}


def test_a_damaged_entry_or_odd_parameters_do_not_break_the_page():
    items = entries(12)
    items[3].update(credits="four", updated_at="yesterday")
    items[4].update(credits=None, updated_at=None, status=7)
    html = page(gallery_items(items), ReviewQuery.parse("this_run", "\x00", "\u00b2"), since=105.0)
    assert "page 1 of 1" in html and "credits recorded" in html
    assert ReviewQuery.parse("all", None, "9" * 5000) == ReviewQuery("all", "", 1)


def test_numbers_that_are_no_numbers_and_damaged_fields_read_as_defaults():
    items = entries(12)
    items[5].update(credits=1e999, updated_at=float("nan"))
    items[6].update(status=["stored"], image_urls="https://cdn.example/one.jpg")
    html = page(gallery_items(items))
    assert "page 1 of 1 (12 items)" in html and "credits recorded: <b>36</b>" in html  # 9 x 4: the rest read 0


def test_the_app_serves_only_plain_files_of_the_folder_it_read_and_errors_carry_the_headers(tmp_path, monkeypatch):
    """The review app with Airflow's auth check stubbed out (the real one is exercised in test_browser.py)."""
    import os

    from airflow.sdk import ObjectStoragePath
    from fastapi.testclient import TestClient

    from airflow_provider_cutout.plugins import review_app
    from airflow_provider_cutout.state.manifest import Manifest

    real = tmp_path / "real"
    real.mkdir()
    writer = Manifest(ObjectStoragePath(f"{real}/"), "test")
    for name in ("a.png", "b.png", "c.png"):
        (real / name).write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
        writer.record({"key": name, "fingerprint": name, "status": "stored", "stored_path": f"{real}/{name}"})
    writer.close()
    from airflow_provider_cutout.state.binding import bind

    bind(ObjectStoragePath(f"{real}/"), "d", "batch")  # what the DAG's run records
    folder = tmp_path / "out"  # the task's output_dir is a link to the real folder
    folder.symlink_to(real)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (real / "b.png").unlink()
    os.link(tmp_path / "secret.png", real / "b.png")  # a hard link to a file elsewhere
    monkeypatch.setattr(review_app, "CATALOGS", review_app._Catalogs(2))
    monkeypatch.setattr(review_app, "_output_dir", lambda ids: (str(folder), 0.0))
    from airflow.api_fastapi.core_api.security import get_user

    review_app.app.dependency_overrides[review_app.ReadAccess.dependency] = lambda: None
    review_app.app.dependency_overrides[get_user] = lambda: None
    monkeypatch.setattr(review_app, "_may_decide", lambda user, ids: False)
    try:
        client = TestClient(review_app.app)
        ids = {"dag_id": "d", "run_id": "r", "task_id": "batch"}
        seen = client.get("/view", params=ids)
        assert seen.status_code == 200 and "class='decide'" not in seen.text  # a reader who may not decide
        assert client.get("/image", params={**ids, "name": "a.png"}).content.endswith(b"a.png")
        assert client.get("/image", params={**ids, "name": "b.png"}).status_code == 404  # hard link
        other = tmp_path / "other"
        other.mkdir()
        (other / "c.png").write_bytes(b"another folder")
        folder.unlink()
        folder.symlink_to(other)  # the folder re-pointed after its manifest was read: its files are not served
        assert client.get("/image", params={**ids, "name": "c.png"}).content != b"another folder"

        def broken(ids):
            raise RuntimeError("the metadata DB is gone")

        monkeypatch.setattr(review_app, "_output_dir", broken)
        failed = TestClient(review_app.app, raise_server_exceptions=False).get("/view", params=ids)
        assert failed.status_code == 500 and failed.headers["Content-Security-Policy"].startswith("default-src")
        assert "metadata DB" not in failed.text
    finally:
        review_app.app.dependency_overrides.clear()


def test_decisions_are_posted_with_the_users_token_checked_and_land_in_the_manifest(tmp_path, monkeypatch):
    """The decide endpoint with Airflow's auth checks stubbed (a user of the auth manager's kind is given);
    the real ones, a read-only user's 403 included, are exercised in test_browser.py."""
    from types import SimpleNamespace

    from airflow.api_fastapi.core_api.security import get_user
    from airflow.sdk import ObjectStoragePath
    from fastapi.testclient import TestClient

    from airflow_provider_cutout.manifest import read_manifest
    from airflow_provider_cutout.plugins import review_app
    from airflow_provider_cutout.state.manifest import Manifest

    writer = Manifest(ObjectStoragePath(f"{tmp_path}/"), "test")
    for key in ("a", "b"):
        (tmp_path / f"{key}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        writer.record({"key": key, "fingerprint": f"fp-{key}", "status": "stored", "prompt": "grayscale",
                       "stored_path": f"{tmp_path}/{key}.png", "sha256": key * 64})
    writer.record({"key": "c", "fingerprint": "fp-c", "status": "failed", "error": "boom"})
    (tmp_path / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a key that is a number (a manifest written by hand)
    writer.record({"key": 7, "fingerprint": "fp-7", "status": "stored", "prompt": "grayscale", "sha256": "7" * 64,
                   "stored_path": f"{tmp_path}/7.png"})
    writer.close()
    from airflow_provider_cutout.state.binding import bind

    bind(ObjectStoragePath(f"{tmp_path}/"), "d", "batch")
    user = SimpleNamespace(get_id=lambda: "7", get_name=lambda: "rita")
    monkeypatch.setattr(review_app, "CATALOGS", review_app._Catalogs(2))
    monkeypatch.setattr(review_app, "_output_dir", lambda ids: (str(tmp_path), 0.0))
    monkeypatch.setattr(review_app, "_may_decide", lambda user, ids: True)
    overrides = review_app.app.dependency_overrides
    overrides[review_app.ReadAccess.dependency] = overrides[review_app.EditAccess.dependency] = lambda: None
    overrides[get_user] = lambda: user
    try:
        client = TestClient(review_app.app)
        ids = {"dag_id": "d", "run_id": "r", "task_id": "batch", "map_index": "-1"}
        page = client.get("/view", params=ids).text
        token = re.search(r"name='csrf' value='([0-9a-f]{64})'", page).group(1)
        assert page.count("<form class='decide'") == 3 and page.count(f"value='{token}'") == 3  # stored items only
        sha = {key: read_manifest(tmp_path)[key].get("sha256") or "" for key in ("a", "b")}
        form = {"key": "a", "fingerprint": "fp-a", "sha256": sha["a"], "decision": "rejected", "note": "handle gone",
                "prompt": "  invert  ", "csrf": token, "status": "all", "q": "", "page": "1"}

        def post(headers=None, **changes):
            return client.post("/decide", params=ids, data={**form, **changes},
                               headers={"Origin": "http://testserver", **(headers or {})}, follow_redirects=False)

        assert post(csrf="0" * 64).status_code == 403  # a form from elsewhere
        assert post(headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert post(headers={"Sec-Fetch-Site": "same-site"}).status_code == 403  # a sibling subdomain
        assert post(key="c", fingerprint="fp-c").status_code == 409  # nothing stored to decide on
        assert post(fingerprint="fp-b").status_code == 409  # an edit that is not this item's
        assert post(decision="approved").status_code == 422  # a corrected prompt goes with Reject
        assert post(prompt="x" * 4001).status_code == 422
        assert read_manifest(tmp_path)["a"].get("review") is None  # nothing refused was written
        numeric = post(key="7", fingerprint="fp-7", sha256="7" * 64, prompt="")  # before: 409, never decided
        assert numeric.status_code == 303 and read_manifest(tmp_path)[7]["review"]["decision"] == "rejected"
        from airflow_provider_cutout.operators.review_gate import PUBLISH_ALL_BUT_REJECTED, publishable

        assert publishable(tmp_path, PUBLISH_ALL_BUT_REJECTED)["rejected"] == [7]
        done = post()
        assert done.status_code == 303 and done.headers["location"].startswith("view?dag_id=d&run_id=r")
        review = read_manifest(tmp_path)["a"]["review"]
        assert review["decision"] == "rejected" and review["by"] == "rita" and review["prompt"] == "invert"
        assert post(key="b", fingerprint="fp-b", sha256=sha["b"], decision="approved", prompt="").status_code == 303
        page = client.get("/view", params={**ids, "status": "rejected"}).text
        assert "rejected: <b>2</b>" in page and "approved: <b>1</b>" in page and "data-key='a'" in page
        assert "data-key='b'" not in page and "handle gone" in page
        again = Manifest(ObjectStoragePath(f"{tmp_path}/"), "rerun")  # b edited again after the page was loaded
        again.record({"key": "b", "fingerprint": "fp-b2", "status": "stored", "prompt": "grayscale",
                      "stored_path": f"{tmp_path}/b.png", "sha256": "2" * 64})
        again.close()
        assert post(key="b", fingerprint="fp-b", sha256=sha["b"], decision="rejected", prompt="").status_code == 409
        assert "review" not in read_manifest(tmp_path)["b"]  # the approval of fp-b does not stand for fp-b2
        from airflow_provider_cutout.state.decisions import Decisions

        Decisions(ObjectStoragePath(f"{tmp_path}/")).decide(  # another API server process decides
            {"key": "b", "fingerprint": "fp-b2", "sha256": "2" * 64, "decision": "rejected", "by": "olga",
             "note": "elsewhere"})
        assert "elsewhere" in client.get("/view", params=ids).text
        overrides[get_user] = lambda: SimpleNamespace(get_id=lambda: "8", get_name=lambda: "mallory")
        assert post().status_code == 403  # the token is bound to the user
    finally:
        overrides.clear()


def test_links_inside_a_folder_two_keys_of_one_text_and_oversized_logs_are_refused(tmp_path, monkeypatch):
    """Found by the second attack on the view: a ``_cutout/manifest`` linked to another DAG's folder showed that
    folder's catalog; a key written twice (``1`` and ``"1"``) took a rejection away from the item the reviewer
    saw; logs of any size were read whole."""
    from types import SimpleNamespace

    from airflow.api_fastapi.core_api.security import get_user
    from airflow.sdk import ObjectStoragePath
    from fastapi.testclient import TestClient

    from airflow_provider_cutout.operators.review_gate import PUBLISH_ALL_BUT_REJECTED, publishable
    from airflow_provider_cutout.plugins import review_app
    from airflow_provider_cutout.state.binding import bind
    from airflow_provider_cutout.state.manifest import Manifest

    def catalog(folder, dag_id, keys):
        folder.mkdir()
        writer = Manifest(ObjectStoragePath(f"{folder}/"), "test")
        for key in keys:
            writer.record({"key": key, "fingerprint": "fp", "status": "stored", "prompt": "p", "sha256": "s" * 64,
                           "stored_path": f"{folder}/{key}.png"})
        writer.close()
        bind(ObjectStoragePath(f"{folder}/"), dag_id, "batch")

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    catalog(mine, "d", ["1", 1])
    catalog(theirs, "other", ["secret-item"])
    folders = {"r": mine}
    monkeypatch.setattr(review_app, "CATALOGS", review_app._Catalogs(2))
    monkeypatch.setattr(review_app, "_output_dir", lambda ids: (str(folders[ids.run_id]), 0.0))
    monkeypatch.setattr(review_app, "_may_decide", lambda user, ids: True)
    overrides = review_app.app.dependency_overrides
    overrides[review_app.ReadAccess.dependency] = overrides[review_app.EditAccess.dependency] = lambda: None
    overrides[get_user] = lambda: SimpleNamespace(get_id=lambda: "7", get_name=lambda: "rita")
    try:
        client = TestClient(review_app.app)
        ids = {"dag_id": "d", "run_id": "r", "task_id": "batch", "map_index": "-1"}
        page = client.get("/view", params=ids).text
        token = re.search(r"name='csrf' value='([0-9a-f]{64})'", page).group(1)
        form = {"key": "1", "fingerprint": "fp", "sha256": "s" * 64, "csrf": token, "decision": "rejected"}
        refused = client.post("/decide", params=ids, data=form, headers={"Origin": "http://testserver"},
                              follow_redirects=False)
        assert refused.status_code == 409  # which of the two? neither
        assert sorted(map(str, publishable(mine, PUBLISH_ALL_BUT_REJECTED)["unverified"])) == ["1", "1"]

        (mine / "_cutout" / "manifest").rename(mine / "_cutout" / "kept")
        (mine / "_cutout" / "manifest").symlink_to(theirs / "_cutout" / "manifest")
        folders["r2"] = mine
        linked = client.get("/view", params={**ids, "run_id": "r2"})
        assert linked.status_code == 503 and "secret-item" not in linked.text and "is a link" in linked.text
        (mine / "_cutout" / "manifest").unlink()
        (mine / "_cutout" / "kept").rename(mine / "_cutout" / "manifest")

        monkeypatch.setattr(review_app, "MAX_STATE_BYTES", 100)
        folders["r3"] = mine
        big = client.get("/view", params={**ids, "run_id": "r3"})
        assert big.status_code == 503 and "more than the view reads" in big.text
    finally:
        overrides.clear()


def test_which_sources_a_browser_may_load_itself():
    """Only a public https URL with no query (a query may sign it in more ways than a list could name: an attack
    review got percent-encoded, Akamai and ;-separated signatures past a list of names)."""
    assert browser_source("https://cdn.example/a.jpg") == "https://cdn.example/a.jpg"
    for url in ("https://user:pw@cdn.example/a.jpg", "https://b.s3.amazonaws.com/a.jpg?X-Amz-Signature=1",
                "https://b.s3.amazonaws.com/a.png?X%2DAmz%2DSignature=abc", "https://a.example/p.jpg?hdnts=exp=1~hmac=x",
                "https://a.blob.core.windows.net/c/a.jpg?sv=1&si%67=2", "https://cdn.example/a.jpg?a=1;sig=x",
                "https://cdn.example/a.jpg?v=3", "s3://aws_default@bucket/a.jpg", "http://cdn.example/a.jpg",
                "javascript:alert(1)", "https:///a", "http://[::1]/a.jpg"):
        assert browser_source(url, loopback=True) is None, url
    assert browser_source("http://127.0.0.1:9/a.jpg") is None  # plain http: only on a developer's machine
    assert browser_source("http://127.0.0.1:9/a.jpg", loopback=True) == "http://127.0.0.1:9/a.jpg"


def test_a_decided_card_keeps_its_place_says_what_was_recorded_and_links_the_next_to_review():
    items = gallery_items(entries(20))
    decided = next(e for e in items if e["key"] == "item-015")
    decided["review"] = {"decision": "rejected", "by": "rita", "prompt": "invert"}
    html = page(items, ReviewQuery("to_review"), recorded="item-015")
    assert html.count(f"id='{item_anchor('item-015')}'") == 1  # kept though the filter no longer keeps it
    assert "Recorded: rejected with a corrected prompt for item-015." in html
    following = items[items.index(decided) + 1]["key"]
    assert f"<a href='#{item_anchor(following)}'>next to review: {following}</a>" in html
    assert "Recorded:" not in page(items, ReviewQuery("to_review"), recorded="<not a key>")  # nothing made up
    assert "Recorded:" not in page(items)
