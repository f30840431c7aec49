"""Shared fixtures: a throw-away Airflow home (sqlite) and a sandbox on loopback.

The Airflow settings are set before anything imports Airflow, so every test runs against the
same temporary metadata database and the repository root as the DAGs folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_HOME = tempfile.mkdtemp(prefix="cutout-airflow-home-")
os.environ.update(
    {
        "AIRFLOW_HOME": _HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # what signs the review view's forms and decisions and the folders' owner records: one made-up secret
        # shared by every Airflow process of the tests, as a deployment shares its own
        "AIRFLOW__CUTOUT__REVIEW_SECRET": f"test-only-secret-{os.urandom(8).hex()}",
    }
)

import requests  # noqa: E402

from airflow_provider_cutout.sandbox import SandboxConfig, run_sandbox  # noqa: E402
from tests.chromium import browser  # noqa: E402,F401  (the fixture, for test_browser and test_cluster)

#: A made-up key; tests search for it in every output to prove it never leaks.
FAKE_KEY = "sk-test-NEVER-LEAK-7f3a9c2e"


def install_script(command: str) -> str:
    """What a shell command prints after ``source scripts/install.sh`` (the tested Airflow versions and the
    constraints an install of one uses), so a test that installs does so as ``make test`` does."""
    done = subprocess.run(["bash", "-c", f"source scripts/install.sh && {command}"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


class Sandbox:
    """A running sandbox with helpers to script faults and read the ledger."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.url = server.base_url

    def sample(self, name: str = "mug", ext: str = "png", **size: int) -> str:
        query = "&".join(f"{k}={v}" for k, v in size.items())
        return f"{self.url}/samples/{name}.{ext}" + (f"?{query}" if query else "")

    def reset(self, balance: int = 1000) -> None:
        # The sandbox waits for the calls in flight first, so none of them lands in the next test's ledger.
        requests.post(f"{self.url}/__sandbox__/reset", json={"balance": balance}, timeout=90).raise_for_status()
        self.server.state.config.latency = 0.0
        self.server.state.config.result_ttl = None
        self.server.state.config.charge_hung_up = False

    def fault(self, kind: str, **spec: Any) -> None:
        body = {"faults": [{"kind": kind, **spec}]}
        requests.post(f"{self.url}/__sandbox__/faults", json=body, timeout=5).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/__sandbox__/ledger", timeout=5).json()

    def settled_ledger(self, within: float = 30) -> dict[str, Any]:
        """The ledger once no API call is in flight (a slow answer is charged before it is sent)."""
        deadline = time.monotonic() + within
        while True:
            ledger = self.ledger()
            if all(c["outcome"] != "in_flight" for c in ledger["calls"]) or time.monotonic() > deadline:
                return ledger
            time.sleep(0.05)

    def conn_json(self, key: str = FAKE_KEY, **extra: Any) -> str:
        import json

        return json.dumps({"conn_type": "cutout", "host": self.url, "password": key, "extra": extra})


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[Any]:
    with run_sandbox(SandboxConfig(balance=1000)) as server:
        yield server


@pytest.fixture
def sandbox(_sandbox_server: Any, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """A fresh sandbox state (1000 credits, no faults) and ``cutout_default`` pointing at it."""
    box = Sandbox(_sandbox_server)
    box.reset()
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", box.conn_json(backoff_base=0.01, backoff_max=0.05))
    return box


def _store(kind: str) -> Iterator[Any]:
    from tests.stores import STORES

    store = STORES[kind]()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """A bucket on moto's S3 server, reached through ``aws_default`` (tests/stores.py)."""
    yield from _store("s3")


@pytest.fixture(scope="session")
def gs() -> Iterator[Any]:
    """A bucket on fake-gcs-server, reached through ``google_cloud_default`` (tests/stores.py)."""
    yield from _store("gs")


@pytest.fixture(scope="session")
def abfs() -> Iterator[Any]:
    """A container on Azurite, reached through ``wasb_default`` (tests/stores.py)."""
    yield from _store("abfs")


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate the throw-away sqlite metadata database once per session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _HOME


def hand_over(folder: Any) -> None:
    """Give an output folder to another DAG, the way docs/review.md tells a user to: delete its owner record (a
    folder belongs to the first DAG that wrote it; these tests re-run a folder with a DAG of another id)."""
    (Path(str(folder)) / "_cutout" / "owner.json").unlink(missing_ok=True)


def xcoms(dag_run: Any, task_id: str, key: str = "return_value") -> dict[int, Any]:
    """XCom values of a finished run from the metadata DB, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        return {row.map_index: XComModel.deserialize_value(row) for row in session.scalars(query)}


def states(dag_run: Any) -> dict[str, list[tuple[Any, int]]]:
    """Task id -> [(state, try_number)] by map index."""
    out: dict[str, list[tuple[Any, int]]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        out.setdefault(ti.task_id, []).append((ti.state, ti.try_number))
    return out


def charges_per_edit(sandbox: Any) -> list[int]:
    """The sandbox's charges per request fingerprint (what was sent), sorted."""
    return sorted(v["charges"] for v in sandbox.ledger()["by_fingerprint"].values() if v["charges"])


def calls_and_charges(sandbox: Any) -> list[tuple[int, int]]:
    """(calls, charges) per request fingerprint, sorted: how often each edit was sent, and how often paid
    (read once no call is in flight)."""
    return sorted((v["calls"], v["charges"]) for v in sandbox.settled_ledger()["by_fingerprint"].values())


def manifest_entries(folder: Any) -> dict[str, dict[str, Any]]:
    """Every manifest entry of an output folder by fingerprint, as the next run would read them."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.manifest import Manifest

    return Manifest(ObjectStoragePath(f"{str(folder).rstrip('/')}/")).entries


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written into ``folder`` (``cert.pem``, ``key.pem``): a TLS server on
    loopback that a client trusts through ``REQUESTS_CA_BUNDLE``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"
