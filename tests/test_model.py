"""A model of the catalog that a machine attacks: Hypothesis drives the real batch operator (``dag.test()`` in
this process, or a process of its own killed at a crash point) against the sandbox on loopback, with photos
changed, changed back and re-served under new validators, stored files deleted, result URLs expired, faults
(a 504 after the charge, a 500 on a result URL, the photos' server down), a second catalog on the same folder,
chunks made by hand, and consent to resend. After every step it checks, from the sandbox's ledger and the
folder only:

- **No edit paid twice without a reason**: an edit is what the sandbox edited (the request's fingerprint and
  the digests of the source bytes it fetched). It may be charged again only when the run had consent
  (``resend_in_doubt``), or when its result was lost by the world since its last charge (its key's file
  deleted, its photo or prompt changed away) *and* its result URL expired since.
- **A run that says success holds the results**: every key of the catalog has a file whose digest is the result
  of the key's current edit (its prompt now, its photo's bytes now).

``make test`` runs a fixed set of examples and a few new ones (``CUTOUT_MODEL_PROFILE=quick``, the default);
``make fuzz`` runs the long profile (``long``: 30 minutes or more). An example it finds is kept below as a
regression test: the steps Hypothesis printed, replayed in order."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.sandbox.edits import sample_image
from airflow_provider_cutout.state.crash import POINTS
from tests.conftest import hand_over, states, xcoms
from tests.run_dag import spawn

pytestmark = pytest.mark.e2e  # newest Airflow only: the catalog's logic is the same on both
KEYS = ("k0", "k1")
VALIDATORS = {"k0": "etag,modified", "k1": "none"}  # a CDN's photo, and a server that gives no validators
PROMPTS = ("grayscale", "invert")
#: rules to leave out (comma-separated names), to look for the next case once one is found (a model run on the
#: code before the fixes stops at its first failure; see docs/reliability.md)
SKIPPED = set(filter(None, os.environ.get("CUTOUT_MODEL_SKIP", "").split(",")))


def enabled(name: str) -> Any:
    return precondition(lambda self: name not in SKIPPED)
W, H = 400, 600  # with grain: more than 128 KiB, a replacement changes only the last bytes


class CatalogModel(RuleBasedStateMachine):
    """The world (photos, files, result URLs, faults) and two catalogs over one folder, driven by rules."""

    sandbox: Any = None  # set by the test that runs it
    root: Path = Path(tempfile.gettempdir())

    def __init__(self) -> None:
        super().__init__()
        self.sandbox.reset()
        self.out = Path(tempfile.mkdtemp(prefix="model-", dir=self.root))
        self.version = dict.fromkeys(KEYS, 1)
        self.prompt = dict.fromkeys(KEYS, PROMPTS[0])  # catalog A's; catalog B lists k0 with the other prompt
        self.step = 0
        self.charge_steps: list[int] = []  # the step of each charge, in the ledger's order
        self.expired: list[int] = []  # the steps at which result URLs expired
        self.losses: dict[str, list[int]] = {k: [] for k in KEYS}  # steps at which a key's result was lost
        self.consented: set[int] = set()  # the steps of runs with resend_in_doubt=True
        self.trace: list[tuple[str, dict[str, Any]]] = []  # the steps so far, as FOUND keeps them (a failure that
        # depends on timing makes Hypothesis give up printing its steps: FlakyStrategyDefinition)

    # -- the world -------------------------------------------------------------------------------

    def url(self, key: str) -> str:
        return f"{self.sandbox.url}/samples/m{key}.png?w={W}&h={H}&grain=1&validators={VALIDATORS[key]}"

    def photo_sha(self, key: str) -> str:
        return hashlib.sha256(sample_image(f"m{key}", W, H, "png", self.version[key], True)).hexdigest()

    def items(self, prompts: dict[str, str]) -> list[dict[str, Any]]:
        return [{"key": k, "prompt": p, "image_urls": [self.url(k)]} for k, p in prompts.items()]

    def admin(self, name: str, body: dict[str, Any]) -> None:
        requests.post(f"{self.sandbox.url}/__sandbox__/{name}", json=body, timeout=10).raise_for_status()

    def set_photo(self, key: str, version: int) -> None:
        self.version[key] = version
        self.losses[key].append(self.step)
        self.admin("photos", {"name": f"m{key}.png", "w": W, "h": H, "version": version})

    def tick(self) -> None:
        """The next step. The model's DAGs (model_a, model_b, model_chunks) share one folder: it is handed to
        whichever runs next, as docs/review.md tells a user (the owner record deleted), so the cases of two
        catalogs on one folder stay reachable (the refusal itself is tested in test_review_security.py)."""
        self.step += 1
        hand_over(self.out)
        frame = sys._getframe(1)
        while frame.f_code.co_name in ("run", "set_photo"):  # helpers: the rule is the one that called them
            frame = frame.f_back  # type: ignore[assignment]
        args = {k: v for k, v in frame.f_locals.items() if k in ("key", "point", "resend")}
        self.trace.append((frame.f_code.co_name, args))

    # -- runs --------------------------------------------------------------------------------------

    def run(self, dag: Any, prompts: dict[str, str], *, resend: bool = False) -> tuple[bool, dict[str, Any]]:
        """One in-process run; whether it succeeded with every item done, and its summary."""
        self.tick()
        if resend:
            self.consented.add(self.step)
        run = dag.test(run_conf={"items": self.items(prompts), "out": str(self.out), "resend": resend})
        self.settle()
        summary = xcoms(run, "batch").get(-1) or {}
        done = states(run)["batch"][0][0] == "success" and not summary.get("failed") and not summary.get("in_doubt")
        return done, summary

    def settle(self) -> None:
        ledger = self.sandbox.settled_ledger()
        charged = [c for c in ledger["calls"] if c["path"] == "edit" and c.get("credits")]
        self.charge_steps += [self.step] * (len(charged) - len(self.charge_steps))

    def assert_holds(self, prompts: dict[str, str]) -> None:
        """Every key's file is the result of its current edit (a run said success)."""
        results: dict[tuple[str, str], set[str]] = {}
        for call in self.sandbox.ledger()["calls"]:
            if call["path"] == "edit" and call.get("credits"):
                for source in call.get("sources_sha256", []):
                    results.setdefault((call["fingerprint"], source), set()).add(call["result_sha256"])
        for key, prompt in prompts.items():
            fp = ImageEditRequest.build(prompt, [self.url(key)], "gpt-image-1", base_url=self.sandbox.url).fingerprint
            files = [p for p in self.out.glob(f"{key}.*") if p.is_file()]
            assert files, f"the run said success, and {key} has no file; the steps: {self.trace[1:]}"
            digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
            expected = results.get((fp, self.photo_sha(key)), set())
            assert digest in expected, (f"the run said success, and {key}'s file is not the result of its current "
                                        f"edit ({prompt!r}, photo version {self.version[key]}); the steps: "
                                        f"{self.trace[1:]}")

    @initialize()
    def first_run(self) -> None:
        done, _ = self.run(model_dags().model_a, self.prompt)
        assert done

    @rule(resend=st.sampled_from([False, False, False, True]))
    def run_a(self, resend: bool) -> None:
        done, _ = self.run(model_dags().model_a, self.prompt, resend=resend)
        if done:
            self.assert_holds(self.prompt)

    @enabled("run_a_killed")
    @rule(point=st.sampled_from(POINTS))
    def run_a_killed(self, point: str) -> None:
        """A run of catalog A whose process dies (SIGKILL) at a crash point, if it gets there."""
        self.tick()
        proc = spawn("tests.dags.model_dags:model_a", {"items": self.items(self.prompt), "out": str(self.out),
                                                      "resend": False}, CUTOUT_CRASH_AT=point)
        proc.communicate(timeout=300)
        self.settle()

    @enabled("run_b")
    @rule()
    def run_b(self) -> None:
        """A second catalog (another DAG) on the same folder, with its own prompt for k0."""
        prompts = {"k0": PROMPTS[1] if self.prompt["k0"] == PROMPTS[0] else PROMPTS[0]}
        done, _ = self.run(model_dags().model_b, prompts)
        if done:
            self.assert_holds(prompts)

    @enabled("run_chunks_listing_k0_twice")
    @rule()
    def run_chunks_listing_k0_twice(self) -> None:
        """A mapped run whose chunks (made by hand) list k0 twice, with two prompts."""
        self.tick()
        other = {"k0": PROMPTS[1] if self.prompt["k0"] == PROMPTS[0] else PROMPTS[0]}
        chunks = [self.items(self.prompt), self.items(other)]
        run = model_dags().model_chunks.test(run_conf={"chunks": chunks, "out": str(self.out)})
        self.settle()
        assert not all(s == "success" for s, _ in states(run)["batch"]), (
            f"both chunks said success, and k0's file can hold only one of its two edits; the steps: {self.trace[1:]}")

    @enabled("change_photo")
    @rule(key=st.sampled_from(KEYS))
    def change_photo(self, key: str) -> None:
        self.tick()
        self.set_photo(key, self.version[key] + 1)

    @precondition(lambda self: any(v > 1 for v in self.version.values()))
    @rule(key=st.sampled_from(KEYS))
    def change_photo_back(self, key: str) -> None:
        self.tick()
        if self.version[key] > 1:
            self.set_photo(key, self.version[key] - 1)

    @enabled("reserve_photo")
    @rule(key=st.sampled_from(KEYS))
    def reserve_photo(self, key: str) -> None:
        """The same bytes under new validators (another node of a CDN pool, a byte-identical re-upload)."""
        self.tick()
        self.admin("photos", {"name": f"m{key}.png", "w": W, "h": H, "reserve": True})

    @enabled("change_prompt")
    @rule(key=st.sampled_from(KEYS))
    def change_prompt(self, key: str) -> None:
        self.tick()
        self.prompt[key] = PROMPTS[1] if self.prompt[key] == PROMPTS[0] else PROMPTS[0]
        self.losses[key].append(self.step)

    @enabled("delete_file")
    @rule(key=st.sampled_from(KEYS))
    def delete_file(self, key: str) -> None:
        self.tick()
        for path in self.out.glob(f"{key}.*"):
            path.unlink()
        self.losses[key].append(self.step)

    @enabled("expire_result_urls")
    @rule()
    def expire_result_urls(self) -> None:
        self.tick()
        self.expired.append(self.step)
        self.admin("expire", {})

    @enabled("gateway_504_after_the_next_charge")
    @rule()
    def gateway_504_after_the_next_charge(self) -> None:
        self.tick()
        self.sandbox.fault("http_error", status=504, after_edit=True)

    @enabled("result_url_500_once")
    @rule()
    def result_url_500_once(self) -> None:
        self.tick()
        self.sandbox.fault("http_error", status=500, path="results")

    @enabled("photo_server_down_once")
    @rule()
    def photo_server_down_once(self) -> None:
        self.tick()
        self.sandbox.fault("http_error", status=503, path="samples")

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def no_edit_paid_twice_without_a_reason(self) -> None:
        calls = [c for c in self.sandbox.ledger()["calls"] if c["path"] == "edit" and c.get("credits")]
        last: dict[tuple[str, tuple[str, ...]], int] = {}
        for call, step in zip(calls, self.charge_steps, strict=False):
            edit = (call["fingerprint"], tuple(call.get("sources_sha256", ())))
            if edit in last and step not in self.consented:
                key = self.key_of(call)
                before = last[edit]
                lost = any(before < s < step for s in self.losses.get(key, []))
                expired = any(before < s < step for s in self.expired)
                assert lost and expired, (f"an edit of {key} paid at step {before} was paid again at step {step} "
                                          f"(lost since: {lost}; result URLs expired since: {expired}); the "
                                          f"steps: {self.trace[1:]}")
            last[edit] = step

    def key_of(self, call: dict[str, Any]) -> str:
        """The key whose URL the call's fingerprint names (each key has its own photo)."""
        for key in KEYS:
            for prompt in PROMPTS:
                request = ImageEditRequest.build(prompt, [self.url(key)], "gpt-image-1", base_url=self.sandbox.url)
                if request.fingerprint == call["fingerprint"]:
                    return key
        return "?"


def model_dags() -> Any:
    from tests.dags import model_dags as dags

    return dags


PROFILES = {
    # make test: a fixed set (derandomized: the same examples every run) and a few new ones
    "quick": [settings(max_examples=6, stateful_step_count=8, derandomize=True),
              settings(max_examples=2, stateful_step_count=8)],
    # make fuzz: 30 minutes or more
    "long": [settings(max_examples=400, stateful_step_count=14)],
}


@pytest.mark.parametrize("profile", range(len(PROFILES[os.environ.get("CUTOUT_MODEL_PROFILE", "quick")])))
def test_the_catalog_model(sandbox, airflow_db, tmp_path, profile):
    CatalogModel.sandbox, CatalogModel.root = sandbox, tmp_path
    chosen = PROFILES[os.environ.get("CUTOUT_MODEL_PROFILE", "quick")][profile]
    run_state_machine_as_test(CatalogModel, settings=settings(
        chosen, deadline=None, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]))


def replay(sandbox: Any, tmp_path: Path, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """A found example, step by step, with the invariant checked after each (as Hypothesis runs it)."""
    CatalogModel.sandbox, CatalogModel.root = sandbox, tmp_path
    state = CatalogModel()
    state.first_run()
    state.no_edit_paid_twice_without_a_reason()
    for name, kwargs in steps:
        getattr(state, name)(**kwargs)
        state.no_edit_paid_twice_without_a_reason()
    state.teardown()


# Examples the model found on the code before the fixes of money safety round 2 (b193f77 with its crash points),
# each shrunk by Hypothesis; kept as they were printed. Each fails there, and passes now.
FOUND = {
    # seed 1, as printed
    "case 11: a key in two chunks": [("delete_file", {"key": "k0"}), ("run_chunks_listing_k0_twice", {})],
    # seed 2 (chunks left out), as printed
    "case 10: two catalogs": [("expire_result_urls", {}), ("run_b", {}),
                              ("run_a_killed", {"point": "charged_recorded"})],
    # seed 2 (chunks left out): printed in 12 steps, the 2 that matter kept
    "case 4: a change far into a photo without validators": [("change_photo", {"key": "k1"}),
                                                             ("run_a", {"resend": False})],
    # seed 3 (chunks and the second catalog left out): printed in 12 steps (a kill after the charge), kept with
    # a 504 after the charge instead, which leaves the same doubt
    "case 2: in doubt, then new validators": [("gateway_504_after_the_next_charge", {}),
                                              ("change_prompt", {"key": "k0"}), ("run_a", {"resend": False}),
                                              ("reserve_photo", {"key": "k0"}), ("run_a", {"resend": False})],
    # seed 4 (chunks, the second catalog and the 504 left out): printed in 11 steps, the 2 that matter kept
    "case 3: the same bytes under new validators": [("reserve_photo", {"key": "k0"}), ("run_a", {"resend": False})],
    # make fuzz on the code after the fixes (seed 20261206), printed in 13 steps, the 3 that matter kept: a third
    # catalog (the chunks) restored the first one's edit, its result URL expired, over the second one's file
    "a third catalog restoring over another's file": [("run_b", {}), ("expire_result_urls", {}),
                                                      ("run_chunks_listing_k0_twice", {})],
    # make fuzz after issue 34 (seed 172987580324652641304303544273730520542), printed in 9 steps: the second
    # chunk fetched again the other catalog's paid result for k0 instead of refusing a key the first chunk lists
    # with another edit, and both chunks said success
    "a chunk fetching again a key another chunk lists": [
        ("expire_result_urls", {}), ("run_a", {"resend": False}), ("delete_file", {"key": "k0"}),
        ("change_photo", {"key": "k0"}), ("result_url_500_once", {}), ("run_b", {}),
        ("reserve_photo", {"key": "k0"}), ("run_chunks_listing_k0_twice", {})],
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_an_example_the_model_found(sandbox, airflow_db, tmp_path, name):
    replay(sandbox, tmp_path, FOUND[name])
