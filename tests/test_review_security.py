"""The review view attacked as its security review did (issue 34): a real API server with per-DAG rights
(``tests.per_dag_auth``: alice edits only ``t_team_a``, bob only ``t_team_b``, vic reads), real batch runs of two
teams' DAGs whose folders come from run conf, and requests as a browser or an attacker would send them.

Newest Airflow only (``browser``): Airflow 3.1's simple auth manager takes no users from the environment the same
way. Each test names the defect it reproduces; each failed on the release before (7e7fea0). Defect 9 (numeric
keys) is in test_review.py: the batch takes only text keys, so only a manifest written otherwise holds numbers.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.test_browser import UI, serving

pytestmark = pytest.mark.browser
VIEW, DECIDE = "/cutout-review/view", "/cutout-review/decide"


class Teams:
    """The API server, the two teams' folders and their logins."""

    def __init__(self, ui: UI, root: Path, sandbox: Any) -> None:
        self.ui, self.root, self.sandbox = ui, root, sandbox
        self.folder_b = root / "team-b"
        self.env = {"AIRFLOW_CONN_CUTOUT_DEFAULT": sandbox.conn_json()}

    def run(self, team: str, out: str) -> dict[str, Any]:
        return self.ui.run(f"tests.dags.team_dags:team_{team}", {"out": out}, **self.env)

    def login(self, name: str) -> dict[str, str]:
        answer = requests.post(f"{self.ui.url}/auth/token", json={"username": name, "password": f"{name}-pw"},
                               timeout=30)
        assert answer.status_code in (200, 201), answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def get(self, ids: dict[str, str], auth: dict[str, str], **params: str) -> requests.Response:
        return requests.get(self.ui.url + VIEW, params={**ids, **params}, headers=auth, timeout=30)

    def post(self, ids: dict[str, str], auth: dict[str, str], form: dict[str, Any],
             **headers: str) -> requests.Response:
        own = {"Origin": self.ui.url, **auth, **headers}
        return requests.post(self.ui.url + DECIDE, params=ids, data=form, headers=own, timeout=30,
                             allow_redirects=False)

    def form(self, ids: dict[str, str], auth: dict[str, str], key: Any) -> dict[str, str]:
        """The decision form of ``key``'s card, as the view gave it to this login."""
        page = self.get(ids, auth)
        assert page.status_code == 200, page.text
        card = page.text.split(f"data-key='{key}'")[1].split("</section>")[0]
        return dict(re.findall(r"name='(key|fingerprint|sha256|csrf)' value='([^']*)'", card))


@pytest.fixture(scope="module")
def teams(tmp_path_factory, sandbox_module) -> Iterator[Teams]:
    """An API server with per-DAG rights on a throw-away home, and team b's catalog, run once (3 charges)."""
    home = tmp_path_factory.mktemp("airflow-teams-home")
    root = tmp_path_factory.mktemp("teams")
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({name: f"{name}-pw" for name in ("alice", "bob", "vic")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k == "AIRFLOW__CUTOUT__REVIEW_SECRET"}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"), "PYTHONPATH": str(Path(__file__).parents[1]),
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.per_dag_auth.PerDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:user,bob:user,vic:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    })
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    with serving(env) as ui:
        found = Teams(ui, root, sandbox_module)
        run = found.run("b", str(found.folder_b))
        assert run["state"] == "success" and sandbox_module.ledger()["charges"] == 3, run
        assert {v["charges"] for v in sandbox_module.ledger()["by_fingerprint"].values()} == {1}
        found.ids_b = {"dag_id": "t_team_b", "run_id": run["run_id"], "task_id": "batch", "map_index": "-1"}
        yield found


@pytest.fixture(scope="module")
def sandbox_module(_sandbox_server) -> Any:
    from tests.conftest import Sandbox

    box = Sandbox(_sandbox_server)
    box.reset()
    return box


def charges(teams: Teams) -> int:
    """The charges so far, each edit (request fingerprint) charged once at most."""
    ledger = teams.sandbox.ledger()
    assert all(v["charges"] <= 1 for v in ledger["by_fingerprint"].values()), ledger["by_fingerprint"]
    return int(ledger["charges"])


def test_1_run_conf_cannot_point_a_dag_at_another_dags_folder(teams):
    """Alice may trigger only t_team_a; she triggers it with team b's folder in conf. Before: the run wrote
    there, her view of it showed team b's items (200) and her approval landed in team b's decisions."""
    before = charges(teams)
    run = teams.run("a", str(teams.folder_b))
    assert run["state"] == "failed" and charges(teams) == before  # refused before anything was paid
    teams.refused_run_id = run["run_id"]
    ids = {**teams.ids_b, "dag_id": "t_team_a", "run_id": run["run_id"]}
    alice = teams.login("alice")
    seen = teams.get(ids, alice)
    assert seen.status_code == 403 and "b-0" not in seen.text and "another DAG" in seen.text
    form = {"key": "b-0", "fingerprint": "x", "sha256": "", "csrf": "0" * 64, "decision": "approved"}
    assert teams.post(ids, alice, form).status_code == 403
    assert not (teams.folder_b / "_cutout" / "decisions").exists()
    assert teams.get(teams.ids_b, alice).status_code == 403  # and team b's own view is not hers
    assert teams.get(teams.ids_b, teams.login("bob")).status_code == 200


def test_2_a_fifo_or_a_link_to_a_device_in_a_folder_fails_only_its_own_view(teams):
    """Before: each look blocked a thread on the FIFO while holding the folder's lock, and after about 40
    looks Airflow's own API timed out."""
    bob = teams.login("bob")
    decisions = teams.folder_b / "_cutout" / "decisions"
    decisions.mkdir(parents=True, exist_ok=True)
    os.mkfifo(decisions / "0.jsonl")
    (decisions / "1.jsonl").symlink_to("/dev/zero")
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            looks = list(pool.map(lambda _: teams.get(teams.ids_b, bob).status_code, range(48)))
        assert set(looks) == {503} and time.monotonic() - started < 60, looks
        answer = requests.get(f"{teams.ui.url}/api/v2/dags", headers=bob, timeout=10)
        assert answer.status_code == 200
    finally:
        (decisions / "0.jsonl").unlink()
        (decisions / "1.jsonl").unlink()
    assert teams.get(teams.ids_b, bob).status_code == 200


class _Listener(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []  # noqa: RUF012

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def listening() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_3_the_view_reads_no_folder_a_run_conf_names_on_another_server_or_connection(teams):
    """Before: a folder ``http://127.0.0.1:<port>/x`` from run conf made the API server GET it when the view
    was opened; ``s3://<any connection>@bucket`` would read with any connection's credentials."""
    alice = teams.login("alice")
    with listening() as url:
        for out in (f"{url}/x", "s3://aws_team_b@bucket-b/catalog", "memory://x"):
            before = charges(teams)
            run = teams.run("a", out)
            assert run["state"] == "failed" and charges(teams) == before, run
            _Listener.seen.clear()
            ids = {**teams.ids_b, "dag_id": "t_team_a", "run_id": run["run_id"]}
            seen = teams.get(ids, alice)
            assert seen.status_code == 403 and _Listener.seen == [], (out, seen.text, _Listener.seen)


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def test_4_a_huge_decision_body_is_refused_while_it_streams(teams):
    """Before: the whole body was read into memory, then refused (400 MiB sent: +540 MiB of RSS)."""
    bob = teams.login("bob")
    pids = _tree(teams.ui.pid)
    before = sum(_rss(pid) for pid in pids)

    def body() -> Iterator[bytes]:
        chunk = b"a" * (1024 * 1024)
        for _ in range(192):
            yield chunk

    try:
        answer = requests.post(teams.ui.url + DECIDE, params=teams.ids_b, data=body(), timeout=60,
                               headers={"Origin": teams.ui.url, "Content-Type": "application/x-www-form-urlencoded",
                                        **bob})
        assert answer.status_code == 413
    except requests.ConnectionError:  # the server stopped reading and closed: refused all the same
        pass
    assert sum(_rss(pid) for pid in pids) - before < 64 * 1024 * 1024
    import http.client
    from urllib.parse import urlencode, urlsplit

    server = urlsplit(teams.ui.url)
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    connection.putrequest("POST", f"{DECIDE}?{urlencode(teams.ids_b)}")  # a body declared at 1 GB, none sent
    for name, value in {"Origin": teams.ui.url, "Content-Length": str(10**9),
                        "Content-Type": "application/x-www-form-urlencoded", **bob}.items():
        connection.putheader(name, value)
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (the API server and its workers)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(name)] = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return found


def test_5_and_6_decisions_only_the_view_signs_and_only_for_the_image_it_showed(teams):
    """Before: a decision file written by anyone who can write the store (a higher ``seq``) overrode a
    reviewer's, a manifest line could carry a ``review``, and a forged rejection with a corrected prompt made
    the next run pay; an approval stood for any image later stored under the same fingerprint."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.manifest import read_manifest
    from airflow_provider_cutout.operators.review_gate import PUBLISH_APPROVED, publishable
    from airflow_provider_cutout.state.manifest import Manifest

    folder = teams.folder_b
    bob = teams.login("bob")
    form = teams.form(teams.ids_b, bob, "b-1")
    assert teams.post(teams.ids_b, bob, {**form, "decision": "rejected", "note": "no"}).status_code == 303
    entries = read_manifest(folder)
    forged = [{"key": "b-1", "fingerprint": entries["b-1"]["fingerprint"], "sha256": entries["b-1"].get("sha256"),
               "decision": "approved", "by": "mallory", "seq": 99, "updated_at": time.time()},
              {"key": "b-0", "fingerprint": entries["b-0"]["fingerprint"], "sha256": entries["b-0"].get("sha256"),
               "decision": "rejected", "by": "mallory", "seq": 99, "updated_at": time.time(), "prompt": "invert",
               "replaces": "grayscale", "edited": "grayscale", "sig": "0" * 64}]
    (folder / "_cutout" / "decisions" / "forged.jsonl").write_text("".join(json.dumps(d) + "\n" for d in forged))
    writer = Manifest(ObjectStoragePath(f"{folder}/"), "forger")  # a record that claims its own review
    writer.record({**entries["b-2"], "review": {"decision": "approved", "by": "mallory"}})
    writer.close()
    shown = read_manifest(folder)
    assert shown["b-1"]["review"]["decision"] == "rejected" and "review" not in shown["b-0"]
    assert "review" not in shown["b-2"]
    assert publishable(folder, PUBLISH_APPROVED)["approved"] == []
    before = charges(teams)
    again = teams.run("b", str(folder))
    assert again["state"] == "success" and charges(teams) == before  # the forged correction paid nothing

    form = teams.form(teams.ids_b, bob, "b-0")  # approved, then re-edited under the same fingerprint
    assert teams.post(teams.ids_b, bob, {**form, "decision": "approved"}).status_code == 303
    assert [a["key"] for a in publishable(folder, PUBLISH_APPROVED)["approved"]] == ["b-0"]
    entry = read_manifest(folder)["b-0"]
    writer = Manifest(ObjectStoragePath(f"{folder}/"), "re-edit")
    writer.record({k: v for k, v in {**entry, "sha256": "f" * 64, "updated_at": time.time()}.items()
                   if k != "review"})
    writer.close()
    assert "review" not in read_manifest(folder)["b-0"]  # a new image awaits a new review
    assert publishable(folder, PUBLISH_APPROVED)["approved"] == []
    stale = teams.post(teams.ids_b, bob, {**form, "decision": "approved"})  # the form of the image seen before
    assert stale.status_code == 409


def test_5b_copies_of_signed_records_from_another_folder_are_not_taken(teams):
    """Found by the attack on this change: a signed decision made in team a's folder (on an entry forged there with
    team b's item's edit and digest) and copied into team b's folder was taken; so was team a's owner record
    copied over team b's."""
    import shutil

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.manifest import read_manifest
    from airflow_provider_cutout.operators.review_gate import PUBLISH_APPROVED, publishable
    from airflow_provider_cutout.state.manifest import Manifest

    folder_a = teams.root / "team-a"
    before = charges(teams)
    run = teams.run("a", str(folder_a))
    assert run["state"] == "success" and charges(teams) == before + 3  # team a's three edits, once each
    ids_a = {**teams.ids_b, "dag_id": "t_team_a", "run_id": run["run_id"]}
    target = read_manifest(teams.folder_b)["b-1"]  # rejected by bob (test_5_and_6)
    writer = Manifest(ObjectStoragePath(f"{folder_a}/"), "forger")  # team b's edit, forged into team a's log
    writer.record({k: v for k, v in target.items() if k not in ("review", "stored_path")})
    writer.close()
    alice = teams.login("alice")
    form = teams.form(ids_a, alice, "b-1")
    for _ in range(3):  # each decision numbered above the last: the third outranks bob's rejection
        assert teams.post(ids_a, alice, {**form, "decision": "approved"}).status_code == 303
    copies = []
    for made in (folder_a / "_cutout" / "decisions").iterdir():
        copies.append(teams.folder_b / "_cutout" / "decisions" / f"copied-{made.name}")
        shutil.copy(made, copies[-1])
    assert read_manifest(teams.folder_b)["b-1"]["review"]["decision"] == "rejected"
    assert "b-1" not in [a["key"] for a in publishable(teams.folder_b, PUBLISH_APPROVED)["approved"]]
    for copy in copies:
        copy.unlink()

    owner_b = teams.folder_b / "_cutout" / "owner.json"
    kept = owner_b.read_bytes()
    shutil.copy(folder_a / "_cutout" / "owner.json", owner_b)  # team a's record over team b's
    try:
        refused = {**ids_a, "run_id": teams.refused_run_id}  # alice's run whose rendered folder is team b's
        assert teams.get(refused, alice).status_code == 403
    finally:
        owner_b.write_bytes(kept)


def test_7_the_gates_text_is_markdown_escaped():
    """Before: a folder from run conf went between backticks unescaped and added a working link to the gate's
    page."""
    from markdown_it import MarkdownIt

    from airflow_provider_cutout.operators.review_gate import markdown

    hostile = "/tmp/x` [click here](https://evil.example) <img src=x onerror=alert(1)> **bold** `"
    html = MarkdownIt("commonmark").render(f"output folder {markdown(hostile)}.")
    assert "<a" not in html and "<img" not in html and "<strong" not in html and "<code" not in html
    assert "click here" in html and "evil.example" in html


def test_8_a_decision_needs_this_origin_and_this_login(teams):
    """Before: over plain HTTP (no ``Sec-Fetch-Site``) a sibling site's form was taken, and a form token stayed
    valid after a new login."""
    bob = teams.login("bob")
    form = {**teams.form(teams.ids_b, bob, "b-1"), "decision": "rejected"}
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        assert teams.post(teams.ids_b, bob, form, Origin=origin).status_code == 403, origin
    no_origin = requests.post(teams.ui.url + DECIDE, params=teams.ids_b, data=form, headers=bob, timeout=30,
                              allow_redirects=False)
    assert no_origin.status_code == 403
    assert teams.post(teams.ids_b, teams.login("bob"), form).status_code == 403  # a new login: reload the view
    assert teams.post(teams.ids_b, bob, form).status_code == 303


def test_a_viewer_reads_and_cannot_decide(teams):
    vic = teams.login("vic")
    seen = teams.get(teams.ids_b, vic)
    assert seen.status_code == 200 and "class='decide'" not in seen.text
    form = {"key": "b-1", "fingerprint": "x", "sha256": "", "csrf": "0" * 64, "decision": "approved"}
    assert teams.post(teams.ids_b, vic, form).status_code == 403
