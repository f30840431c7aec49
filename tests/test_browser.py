"""Pages in headless Chromium (Debian's chromium and chromedriver): the `cutout` connection in Airflow's
real UI (the form's fields, saving, the Test button against the sandbox), a batch run's review gallery, and
the "Cutout review" view on a task instance's page, served by the provider's plugin in a real API server.

Runs on the newest supported Airflow only (the floor run deselects ``-m browser``): Airflow 3.1's
form shows hook-defined field behaviour only with the FAB provider installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
import requests

from airflow_provider_cutout.sandbox import SandboxConfig, run_sandbox
from tests.chromium import ARTIFACTS, body_text, wait_for
from tests.conftest import REPO, states, xcoms
from tests.run_dag import MARK

pytestmark = pytest.mark.browser
RIGHT_KEY = "sk-browser-right-key"
WRONG_KEY = "sk-browser-wrong-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class UI:
    """A running API server: its URL and the environment of its Airflow home."""

    url: str
    env: dict[str, str]
    pid: int = 0  # the API server's process (its workers are its children)

    def run(self, dag: str, conf: dict[str, Any], **env: str) -> dict[str, Any]:
        """One ``dag.test`` run written into the API server's own metadata DB (what its pages show)."""
        return self.finish(self.start(dag, conf, **env))

    def start(self, dag: str, conf: dict[str, Any], **env: str) -> subprocess.Popen[str]:
        """``run``, started: a run that waits for a person (a review gate) is answered through the API server. Its
        output goes to files (a pipe nobody reads while the run waits would fill, and block it)."""
        out = tempfile.NamedTemporaryFile("w+", prefix="cutout-ui-run-", suffix=".log", delete=False)
        proc = subprocess.Popen([sys.executable, "-m", "tests.run_dag", dag, json.dumps(conf)], cwd=REPO,
                                env={**self.env, "PYTHONPATH": str(REPO), **env,
                                     "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags")},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        proc.log = out.name  # type: ignore[attr-defined]
        out.close()
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
        proc.wait(timeout=timeout)
        out = Path(proc.log).read_text()  # type: ignore[attr-defined]
        assert proc.returncode == 0, out[-3000:]
        return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith(MARK))[len(MARK):])

    def waiting(self, dag_id: str, timeout: float = 180) -> str:
        """The run of ``dag_id`` whose gate waits for an answer (waited for): its task instance parked, since
        Airflow resumes only a parked one (an answer given between the gate's asking and its parking is stored,
        and the run waits for ever)."""
        auth = {"Authorization": f"Bearer {self.token()}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = requests.get(f"{self.url}/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails", headers=auth, timeout=30)
            waiting = [d for d in found.json().get("hitl_details", []) if not d.get("response_received")
                       and d["task_instance"].get("state") == "awaiting_input"]  # an answer before that is lost
            if waiting:
                return str(waiting[0]["task_instance"]["dag_run_id"])
            time.sleep(1)
        raise AssertionError(f"no gate of {dag_id} asked within {timeout:.0f} s")

    def answer(self, dag_id: str, task_id: str, option: str) -> str:
        """Answer the waiting gate ``task_id`` of ``dag_id`` with ``option`` through the REST API; its run id."""
        run_id = self.waiting(dag_id)
        answered = requests.patch(
            f"{self.url}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/-1/hitlDetails",
            json={"chosen_options": [option]}, headers={"Authorization": f"Bearer {self.token()}"}, timeout=30)
        assert answered.status_code == 200, answered.text
        return run_id

    def xcom(self, ids: dict[str, str], key: str) -> Any:
        """An XCom of a task instance, through the REST API."""
        path = "/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/".format(
            **{k: quote(v, safe="") for k, v in ids.items()}) + quote(key, safe="")
        answer = requests.get(self.url + path, params={"map_index": ids["map_index"]},
                              headers={"Authorization": f"Bearer {self.token()}"}, timeout=30)
        answer.raise_for_status()
        return answer.json()["value"]

    def token(self) -> str:
        """A token of the all-admins auth manager (what the UI gets when it loads)."""
        return str(requests.get(f"{self.url}/auth/token", timeout=10).json()["access_token"])


@contextlib.contextmanager
def serving(env: dict[str, str]) -> Iterator[UI]:
    """Airflow's API server on loopback for the Airflow home of ``env``; stopped whatever happens."""
    home = Path(env["AIRFLOW_HOME"])
    port = free_port()
    log = (home / f"api-server-{port}.log").open("w")
    served = {**env, "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"}  # on loopback: sandbox sources shown
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port",
                             str(port)], env=served, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (home / f"api-server-{port}.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/api/v2/version", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the API server did not start within 120 s")
        yield UI(url, env, proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory) -> Iterator[UI]:
    """An API server with a throw-away sqlite home, in the simple auth manager's all-admins mode."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k == "AIRFLOW__CUTOUT__REVIEW_SECRET"}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # off by default; on in this throw-away home only
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    })
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    with serving(env) as ui:
        yield ui


def test_connection_form_save_and_test_button(api_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    with run_sandbox(SandboxConfig(api_key=RIGHT_KEY, balance=1000)) as sandbox:
        sandbox_port = sandbox.server_address[1]
        driver.get(f"{api_server.url}/connections")
        wait_for(driver, ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Add Connection']"))).click()
        wait_for(driver, ec.visibility_of_element_located((By.NAME, "connection_id"))).send_keys("cutout_browser")
        kind = driver.find_element(By.CSS_SELECTOR, "input[role=combobox]")
        kind.send_keys("Cutout")
        wait_for(driver, lambda d: "Cutout.Pro" in body_text(d))
        kind.send_keys(Keys.ENTER)
        wait_for(driver, ec.visibility_of_element_located((By.NAME, "host")))

        labels = {label.text.strip() for label in driver.find_elements(By.TAG_NAME, "label") if label.text.strip()}
        assert {"Base URL", "API Key", "Port (optional)"} <= labels, labels
        assert not {"Login", "Schema", "Host", "Password"} & labels, labels
        assert not driver.find_elements(By.NAME, "login") and not driver.find_elements(By.NAME, "schema")
        assert "Read timeout (s)" in body_text(driver) or driver.find_elements(By.NAME, "element_read_timeout")
        driver.save_screenshot(str(ARTIFACTS / "connection-form.png"))

        driver.find_element(By.NAME, "host").send_keys("http://127.0.0.1")
        driver.find_element(By.NAME, "port").send_keys(str(sandbox_port))
        driver.find_element(By.NAME, "password").send_keys(RIGHT_KEY)
        driver.find_element(By.XPATH, "//button[normalize-space()='Save']").click()
        row = wait_for(driver, ec.visibility_of_element_located(
            (By.XPATH, "//tr[.//*[normalize-space()='cutout_browser']]")))

        row.find_element(By.CSS_SELECTOR, "button[aria-label='Test Connection']").click()
        wait_for(driver, lambda d: "image credits available" in body_text(d) or "Failed" in body_text(d))
        text = body_text(driver)
        assert "1000 image credits available" in text, text[-800:]
        driver.save_screenshot(str(ARTIFACTS / "connection-test-success.png"))
        assert sandbox.state.ledger()["credits_charged"] == 0  # the test reads the balance only

        driver.refresh()
        row = wait_for(driver, ec.visibility_of_element_located(
            (By.XPATH, "//tr[.//*[normalize-space()='cutout_browser']]")))
        row.find_element(By.CSS_SELECTOR, "button[aria-label='Edit Connection']").click()
        password = wait_for(driver, ec.visibility_of_element_located((By.NAME, "password")))
        password.send_keys(Keys.CONTROL, "a")
        password.send_keys(Keys.DELETE)
        password.send_keys(WRONG_KEY)
        driver.find_element(By.XPATH, "//button[normalize-space()='Save']").click()
        wait_for(driver, ec.invisibility_of_element_located((By.NAME, "password")))
        row = wait_for(driver, ec.visibility_of_element_located(
            (By.XPATH, "//tr[.//*[normalize-space()='cutout_browser']]")))
        row.find_element(By.CSS_SELECTOR, "button[aria-label='Test Connection']").click()
        wait_for(driver, lambda d: "rejected the API key" in body_text(d) or "Bad Request" in body_text(d))
        text = body_text(driver)
        assert "Cutout rejected the API key" in text and "check the API Key" in text, text[-800:]
        assert WRONG_KEY not in text and RIGHT_KEY not in text
        driver.save_screenshot(str(ARTIFACTS / "connection-test-failure.png"))


def placeholder_share(element) -> float:
    """The share of an element's pixels in the placeholder's colour (#f0f2f4), from a screenshot of it."""
    import io

    from PIL import Image

    pixels = list(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB").getdata())
    return sum(p == (240, 242, 244) for p in pixels) / max(1, len(pixels))


def test_gallery_of_a_real_batch_run_shows_every_item_failed_first(sandbox, airflow_db, tmp_path, browser):
    from selenium.webdriver.common.by import By

    from tests.dags.batch_dags import tolerant

    driver = browser
    sandbox.fault("failed_edit", count=2)  # the first two edits fail (and cost nothing)
    out = tmp_path / "catalog"
    dr = tolerant.test(run_conf={"n": 7, "out": str(out), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("success", 1)]
    summary = xcoms(dr, "batch")[-1]
    assert summary["gallery"] == str(out / "cutout-gallery.html") and summary["failed"] == 2
    assert xcoms(dr, "batch", "_link_CutoutGalleryLink")[-1] == (  # the review view: a browser opens no file://
        f"/cutout-review/view?dag_id=t_batch_tolerant&run_id={quote(dr.run_id, safe='')}&task_id=batch&map_index=-1")
    ledger = sandbox.ledger()
    charged = [v["charges"] for v in ledger["by_fingerprint"].values() if v["charges"]]
    assert ledger["charges"] == 5 and charged == [1] * 5

    driver.get((out / "cutout-gallery.html").as_uri())
    cards = driver.find_elements(By.CSS_SELECTOR, "section.item")
    statuses = [card.get_attribute("data-status") for card in cards]
    assert statuses == ["failed"] * 2 + ["stored"] * 5, statuses
    assert sorted(card.get_attribute("data-key") for card in cards) == sorted(f"item-{i}" for i in range(7))
    assert "FailedEditError" in cards[0].text and "grayscale" in cards[0].text
    for card in cards:
        driver.execute_script("arguments[0].scrollIntoView()", card)
        images = card.find_elements(By.TAG_NAME, "img")
        assert len(images) == (1 if card.get_attribute("data-status") == "failed" else 2)
        for image in images:
            wait_for(driver, lambda d, img=image: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img), timeout=10)
        assert placeholder_share(images[0]) < 0.2  # a source that loads shows no placeholder
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(ARTIFACTS / "gallery.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors

    # The source server gone (the demo's sandbox stopped): each source says so where its thumbnail was.
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.catalog.gallery import write_gallery
    from airflow_provider_cutout.manifest import read_manifest

    gone = [{**e, "image_urls": [f"http://127.0.0.1:9/{e['key']}.png"]} for e in read_manifest(out).values()]
    page = write_gallery(ObjectStoragePath(f"{out}/"), gone)
    driver.get(Path(str(page)).as_uri())
    for card in driver.find_elements(By.CSS_SELECTOR, "section.item"):
        driver.execute_script("arguments[0].scrollIntoView()", card)
        source = card.find_element(By.CSS_SELECTOR, "img.source")
        wait_for(driver, lambda d, img=source: d.execute_script("return arguments[0].complete", img), timeout=10)
        assert driver.execute_script("return arguments[0].naturalWidth", source) == 0
        assert placeholder_share(source) > 0.8  # the placeholder covers the broken image's box
        assert driver.execute_script("return getComputedStyle(arguments[0], '::after').content", source) == (
            '"source not reachable: 127.0.0.1:9"')
    driver.save_screenshot(str(ARTIFACTS / "gallery-sources-gone.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors and all("http://127.0.0.1:9/" in entry["message"] for entry in errors), errors  # only those


def test_the_review_view_on_a_task_instance_page_shows_its_catalog_and_runs_no_script(
        api_server, browser, sandbox, tmp_path):
    """A real batch run (hostile keys, prompts and a fail reason among its items) written into the API server's
    DB; its task instance's page has the "Cutout review" view: every item, counts and credits, filters, the
    stored results streamed by the plugin. No script runs, no console error; images outside the catalog are
    404; with a forged token, 403."""
    from selenium.webdriver.common.by import By

    from tests.dags.batch_dags import HOSTILE_KEYS

    sandbox.fault("failed_edit", count=1, fail_reason="<script>window.__pwned='reason'</script>")
    out = tmp_path / "catalog"
    run = api_server.run("tests.dags.batch_dags:review", {"n": 6, "out": str(out)},
                         AIRFLOW_CONN_CUTOUT_DEFAULT=sandbox.conn_json())
    summary = run["summaries"][0]
    assert run["state"] == "success" and (summary["edited"], summary["failed"]) == (9, 1), run
    assert sandbox.ledger()["charges"] == 9  # the failed edit cost nothing

    ids = {"dag_id": "t_batch_review", "run_id": run["run_id"], "task_id": "batch", "map_index": "-1"}
    link = api_server.xcom(ids, "_link_CutoutGalleryLink")
    assert link == f"/cutout-review/view?{urlencode(ids)}"  # the task's "Cutout gallery" link opens the view
    view = f"{api_server.url}/cutout-review/view"
    forged = {"Authorization": "Bearer not-a-token"}  # all-admins mode lets anyone in: a forged token shows the check
    assert requests.get(view, params=ids, headers=forged, timeout=30).status_code == 403
    auth = {"Authorization": f"Bearer {api_server.token()}"}
    page = requests.get(view, params=ids, headers=auth, timeout=30)
    assert page.status_code == 200 and "script-src" not in page.headers["Content-Security-Policy"]
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "<script" not in page.text and "onerror=" not in page.text.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned=&#x27;key&#x27;&lt;/script&gt;" in page.text
    assert "failed: 1" in page.text and "stored: 9" in page.text and "credits recorded: <b>36" in page.text
    failed = requests.get(view, params={**ids, "status": "failed"}, headers=auth, timeout=30).text
    assert failed.count("<section class='item") == 1 and "FailedEditError" in failed

    image = f"{api_server.url}/cutout-review/image"
    stored = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert len(stored) == 9
    shown = requests.get(image, params={**ids, "name": stored[0]}, headers=auth, timeout=30)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    assert shown.content == (out / stored[0]).read_bytes()
    (out / "not-in-the-catalog.png").write_bytes(shown.content)
    for name in ("../catalog/" + stored[0], "not-in-the-catalog.png", "cutout-gallery.html", "..", "_cutout"):
        assert requests.get(image, params={**ids, "name": name}, headers=auth, timeout=30).status_code == 404, name
    other = {**ids, "task_id": "review_items", "name": stored[0]}  # a task instance that is no batch
    missing = requests.get(image, params=other, headers=auth, timeout=30)
    assert missing.status_code == 404 and missing.headers["Content-Security-Policy"].startswith("default-src 'none'")
    odd = requests.get(view, params={**ids, "map_index": "--1", "page": "\u00b2"}, headers=auth, timeout=30)
    assert odd.status_code == 200 and "page 1 of 1" in odd.text  # malformed numbers read as their defaults

    driver = browser
    driver.get(f"{api_server.url}/dags/t_batch_review/runs/{quote(run['run_id'], safe='')}/tasks/batch")
    tab = wait_for(driver, lambda d: next(iter(d.find_elements(By.XPATH, "//*[normalize-space()='Cutout review']")),
                                          None), timeout=60)
    tab.click()
    frame = wait_for(driver, lambda d: next(iter(d.find_elements(By.TAG_NAME, "iframe")), None))
    driver.switch_to.frame(frame)
    cards = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "section.item"))
    assert len(cards) == 10
    full = driver.find_element(By.LINK_TEXT, "open full page")  # out of Airflow's frame, for a long review
    assert full.get_attribute("target") == "_blank" and "/cutout-review/view?" in full.get_attribute("href")
    assert sorted(c.get_attribute("data-key") for c in cards) == sorted([f"item-{i}" for i in range(6)]
                                                                         + list(HOSTILE_KEYS))
    for card in cards:
        if card.get_attribute("data-status") == "stored":
            (result,) = card.find_elements(By.CSS_SELECTOR, "img[alt^='result']")
            driver.execute_script("arguments[0].scrollIntoView()", result)
            wait_for(driver, lambda d, img=result: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img), timeout=10)
    assert driver.execute_script("return window.__pwned === undefined")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.switch_to.default_content()
    assert driver.execute_script("return window.__pwned === undefined")
    driver.save_screenshot(str(ARTIFACTS / "review-view.png"))  # docs/images/review.png
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors

    (out / stored[1]).unlink()  # a stored result replaced by a link to a file of the API server's host
    (out / stored[1]).symlink_to(os.path.join(api_server.env["AIRFLOW_HOME"], "airflow.db"))
    (out / stored[2]).unlink()
    os.mkfifo(out / stored[2])  # or by a FIFO, which would block a reader
    for name in stored[1:3]:
        assert requests.get(image, params={**ids, "name": name}, headers=auth, timeout=10).status_code == 404, name


def test_a_merchandiser_reviews_before_and_after_in_place_and_the_gates_primary_button_publishes(
        api_server, browser, sandbox, tmp_path):
    """example_cutout_review end to end, as a merchandiser reviews. One product's edit fails: the gate still asks.
    In the view (Chromium at 1280 x 800, the UI's own session) the failed item comes first, and a card shows the
    source and the result side by side, each at least 240 px, loaded, and a link to the image at full size. After
    each decision the page is back at that card, saying what was recorded. Two items are rejected (one with a
    corrected prompt), two approved; the gate's primary button is "Publish approved only", and it publishes
    exactly the approved. The next run edits the corrected and the failed item (two charges); "Reject run" fails
    its gate, so that run shows as failed."""
    from selenium.webdriver.common.by import By

    from airflow_provider_cutout.manifest import read_manifest

    env = {"AIRFLOW_CONN_CUTOUT_DEFAULT": sandbox.conn_json(), "CUTOUT_EXAMPLE_OUTPUT": str(tmp_path)}
    conf: dict[str, Any] = {}  # its folder is fixed in the DAG file
    sandbox.fault("failed_edit", count=1, fail_reason="Face not found")
    proc = api_server.start("tests.dags.examples:example_cutout_review", conf, **env)
    try:
        run_id = api_server.waiting("example_cutout_review")  # the refresh succeeded with one failed item
        charged, entries = sandbox.ledger(), read_manifest(tmp_path / "review")
        (failed,) = [k for k, e in entries.items() if e["status"] == "failed"]
        stored = sorted(k for k, e in entries.items() if e["status"] == "stored")
        assert len(stored) == 11 and charged["charges"] == 11  # the failed edit cost nothing
        assert all(v["charges"] == 1 for v in charged["by_fingerprint"].values() if v["charges"])
        ids = {"dag_id": "example_cutout_review", "run_id": run_id, "task_id": "refresh_catalog", "map_index": "-1"}
        browser.set_window_size(1280, 800)
        browser.get(f"{api_server.url}/dags/example_cutout_review")  # the UI's session cookie, as a person has
        wait_for(browser, lambda d: "example_cutout_review" in d.page_source, timeout=60)
        view = f"{api_server.url}/cutout-review/view?{urlencode(ids)}"
        browser.get(view)
        cards = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.item"))
        assert cards[0].get_attribute("data-key") == failed and "Face not found" in cards[0].text
        links = cards[1].find_elements(By.CSS_SELECTOR, ".pics a")
        assert [a.get_attribute("target") for a in links] == ["_blank", "_blank"]  # before, after
        for link in links:
            img = link.find_element(By.TAG_NAME, "img")
            wait_for(browser, lambda d, i=img: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", i), timeout=10)
            assert img.size["width"] >= 240 and img.size["height"] >= 240, img.size
            assert link.get_attribute("href") == img.get_attribute("src")  # the link opens the image itself
        natural = browser.execute_script("return arguments[0].naturalWidth", links[1].find_element(By.TAG_NAME, "img"))
        browser.get(links[1].get_attribute("href"))  # the result at full size, as the link opens it
        assert browser.execute_script("return document.images[0].naturalWidth") == natural > 240

        plan = {stored[0]: ("rejected", "invert"), stored[1]: ("rejected", ""), stored[4]: ("approved", ""),
                stored[5]: ("approved", "")}
        browser.get(view)
        hostile = "the product itself changed <script>window.__pwned='note'</script><img src=x onerror=alert(1)>"
        for key, (decision, prompt) in plan.items():  # one after the other, as the page comes back
            card = wait_for(browser, lambda d, k=key: d.find_element(By.CSS_SELECTOR, f"section[data-key='{k}']"))
            card.find_element(By.NAME, "note").send_keys(hostile if decision == "rejected" else "")
            card.find_element(By.NAME, "prompt").send_keys(prompt)
            card.find_element(By.CSS_SELECTOR, f"button[value='{decision}']").click()
            card = wait_for(browser, lambda d, k=key, v=decision: d.find_element(
                By.CSS_SELECTOR, f"section[data-key='{k}'][data-review='{v}']"))
            assert urlsplit(browser.current_url).fragment == card.get_attribute("id")  # back at that card
            assert f"Recorded: {decision}" in card.text and "next to review" in card.text
            top = browser.execute_script("return arguments[0].getBoundingClientRect().top", card)
            assert 0 <= top < 400, top  # in view, under the sticky header
        browser.save_screenshot(str(ARTIFACTS / "review-decisions.png"))  # docs/images/review-decisions.png
        browser.get(view + "&status=rejected")
        shown = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section.item"))
        assert sorted(c.get_attribute("data-key") for c in shown) == sorted(stored[:2])
        assert "corrected prompt" in body_text(browser) and "rejected: 2" in body_text(browser)
        assert hostile in body_text(browser) and browser.execute_script("return window.__pwned === undefined")
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors

        browser.get(f"{api_server.url}/dags/example_cutout_review/runs/{quote(run_id, safe='')}/tasks/review/"
                    "required_actions")
        buttons = {name: wait_for(browser, lambda d, n=name: next(iter(d.find_elements(
            By.XPATH, f"//button[normalize-space()='{n}']")), None), timeout=60)
            for name in ("Publish approved only", "Publish all but rejected", "Reject run")}
        colours = {name: b.value_of_css_property("background-color") for name, b in buttons.items()}
        assert colours["Publish all but rejected"] == colours["Reject run"] != colours["Publish approved only"]
        link = browser.find_element(By.LINK_TEXT, "Cutout review view").get_attribute("href")
        assert link == view  # the gate's body links to the batch task's review view
        assert "Review 12 Cutout items: 11 edited this run, 1 failed, 44 credits" in body_text(browser)
        assert "opens it full page" in body_text(browser)
        browser.save_screenshot(str(ARTIFACTS / "review-gate.png"))  # docs/images/review-gate.png
        buttons["Publish approved only"].click()  # the primary button
        run = api_server.finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run["state"] == "success", run
    published = api_server.xcom({**ids, "task_id": "publish"}, "return_value")
    assert sorted(published) == sorted(stored[4:6])
    assert sorted(p.stem for p in (tmp_path / "published").iterdir()) == sorted(published)
    answer = api_server.xcom({**ids, "task_id": "review"}, "return_value")
    assert sorted(answer["undecided"]) == sorted(set(stored) - set(plan))  # held back, and named
    assert answer["not_stored"] == [failed] and sorted(answer["rejected"]) == sorted(stored[:2])
    gate_tab = requests.get(f"{api_server.url}/cutout-review/view", params={**ids, "task_id": "review"},
                            headers={"Authorization": f"Bearer {api_server.token()}"}, timeout=30)
    assert gate_tab.status_code == 404 and "task_id=refresh_catalog" in gate_tab.text  # the gate's tab links on
    assert sandbox.ledger()["charges"] == 11  # reviewing and publishing cost nothing

    proc = api_server.start("tests.dags.examples:example_cutout_review", conf, **env)
    try:
        api_server.answer("example_cutout_review", "review", "Reject run")
        again = api_server.finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert again["state"] == "failed", again  # a rejected run shows as such
    ledger = sandbox.ledger()
    assert ledger["charges"] == 13  # the item with a corrected prompt and the failed one were edited again
    assert all(v["charges"] == 1 for v in ledger["by_fingerprint"].values() if v["charges"])
    calls = [c for c in ledger["calls"] if c["path"] == "edit" and c["seq"] > charged["calls"][-1]["seq"]]
    assert ["invert"] in [c["operations"] for c in calls] and len(calls) == 2
    after = read_manifest(tmp_path / "review")
    assert after[stored[0]]["prompt"] == "invert" and "review" not in after[stored[0]]
    assert after[stored[1]]["review"]["decision"] == "rejected" and after[failed]["status"] == "stored"


def test_a_reader_sees_the_view_but_gets_403_on_a_decision_and_a_user_may_decide(api_server, sandbox, tmp_path):
    """Airflow's simple auth manager with real roles (a second API server on the same metadata DB): a viewer
    sees the catalog without decision forms and gets 403 on a decision, also with a valid form; a user decides."""
    import re

    from airflow_provider_cutout.manifest import read_manifest

    out = tmp_path / "catalog"
    run = api_server.run("tests.dags.batch_dags:review", {"n": 2, "out": str(out)},
                         AIRFLOW_CONN_CUTOUT_DEFAULT=sandbox.conn_json())
    assert run["state"] == "success" and sandbox.ledger()["charges"] == 6, run
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"rita": "rita-pw", "vic": "vic-pw"}))
    env = {**api_server.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "rita:user,vic:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    with serving(env) as ui:
        def auth(name: str) -> dict[str, str]:
            answer = requests.post(f"{ui.url}/auth/token", json={"username": name, "password": f"{name}-pw"},
                                   timeout=30)
            assert answer.status_code in (200, 201), answer.text
            return {"Authorization": f"Bearer {answer.json()['access_token']}"}

        ids = {"dag_id": "t_batch_review", "run_id": run["run_id"], "task_id": "batch", "map_index": "-1"}
        reader, user = auth("vic"), auth("rita")
        seen = requests.get(f"{ui.url}/cutout-review/view", params=ids, headers=reader, timeout=30)
        assert seen.status_code == 200 and "data-key='item-0'" in seen.text and "class='decide'" not in seen.text
        page = requests.get(f"{ui.url}/cutout-review/view", params=ids, headers=user, timeout=30).text
        card = page.split("data-key='item-0'")[1].split("</section>")[0]
        form = dict(re.findall(r"name='(key|fingerprint|sha256|csrf)' value='([^']*)'", card))
        assert form["key"] == "item-0" and len(form["csrf"]) == 64
        decision = {**form, "decision": "rejected", "note": "not our mug", "prompt": ""}
        refused = requests.post(f"{ui.url}/cutout-review/decide", params=ids, data=decision,
                                headers={**reader, "Origin": ui.url}, timeout=30, allow_redirects=False)
        assert refused.status_code == 403 and "review" not in read_manifest(out)["item-0"]
        done = requests.post(f"{ui.url}/cutout-review/decide", params=ids, data=decision,
                             headers={**user, "Origin": ui.url}, timeout=30, allow_redirects=False)
        assert done.status_code == 303, done.text
    review = read_manifest(out)["item-0"]["review"]
    assert review["decision"] == "rejected" and review["by"] == "rita" and review["note"] == "not our mug"
    assert sandbox.ledger()["charges"] == 6  # deciding costs nothing
