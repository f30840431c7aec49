"""The package as users get it: ``make dist`` builds an sdist and a wheel that twine accepts, the sdist
builds the same wheel as the tree, and the wheel (not the editable checkout) installs into a fresh
virtual environment with only its base dependencies and works there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from airflow_provider_cutout import __version__
from tests.conftest import REPO, install_script

pytestmark = [pytest.mark.e2e, pytest.mark.alone]  # builds in the tree: no DAG run may start beside it
NEWEST_AIRFLOW = install_script("echo $NEWEST_AIRFLOW")
PINS = install_script(f"pins {NEWEST_AIRFLOW}").split()  # the constraints make test installs with


def run(*args: str | Path, **kwargs) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist() -> Path:
    """What ``make dist`` builds (its script, which also runs ``twine check``)."""
    run("bash", REPO / "scripts" / "dist.sh", cwd=REPO)
    return REPO / "dist"


def members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_sdist_carries_the_docs_and_builds_the_same_wheel_as_the_tree(dist, tmp_path):
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")  # python -m build made it from the sdist
    assert wheel.name == f"airflow_provider_cutout-{__version__}-py3-none-any.whl"
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"README.md", "LICENSE", "docs/changelog.md", "pyproject.toml", "airflow_provider_cutout/py.typed"} <= names
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools never drops stale files from build/
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path, REPO)
    shutil.rmtree(REPO / "airflow_provider_cutout.egg-info", ignore_errors=True)  # see scripts/test.sh
    (direct,) = tmp_path.glob("*.whl")
    assert members(direct) == members(wheel)
    inside = members(wheel)
    metadata = inside[f"airflow_provider_cutout-{__version__}.dist-info/METADATA"].decode()
    assert "Classifier: Framework :: Apache Airflow :: Provider" in metadata
    assert "License-Expression: Apache-2.0" in metadata and "Project-URL: Changelog" in metadata
    assert "airflow_provider_cutout/py.typed" in inside
    assert f"## {__version__}" in (REPO / "docs" / "changelog.md").read_text()  # the release has its entry


def test_the_wheel_installs_alone_registers_and_its_sandbox_extra_answers(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip", "install", "--quiet",
                                            "--disable-pip-version-check", *PINS]
    run(*pip, wheel, f"apache-airflow=={NEWEST_AIRFLOW}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    location = run(python, "-c", "import airflow_provider_cutout, importlib.util as u; "
                   "import airflow_provider_cutout.hooks.cutout, airflow_provider_cutout.operators.image_edit, "
                   "airflow_provider_cutout.operators.batch; assert u.find_spec('PIL') is None, 'Pillow is installed'; "
                   "print(airflow_provider_cutout.__file__)", env=env, cwd=tmp_path)
    assert str(venv) in location  # the installed wheel, not the checkout
    listed = run(venv / "bin" / "airflow", "providers", "list", "-o", "json", env=env, cwd=tmp_path)
    providers = {p["package_name"]: p for p in json.loads(listed[listed.index("[") :])}
    assert providers["airflow-provider-cutout"]["version"] == __version__

    run(*pip, f"{wheel}[sandbox]")
    sandbox = subprocess.Popen([venv / "bin" / "cutout-sandbox", "--port", "0"], stdout=subprocess.PIPE, text=True,
                               env=env, cwd=tmp_path)
    try:
        url = json.loads(sandbox.stdout.readline())["sandbox"]  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/__sandbox__/ledger", timeout=5) as answer:
                    assert json.load(answer)["charges"] == 0
                break
            except OSError:
                assert time.monotonic() < deadline, "the sandbox never answered"
                time.sleep(0.2)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
