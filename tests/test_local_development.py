"""docs/local-development.md works as written: its ```bash blocks run in order, in one bash process
(``set -euo pipefail``), in a fresh clone of the repository, with HOME, TMPDIR (so the page's
``mktemp -d`` Airflow home) and the sandbox's port in this test's temporary folder.

One block is not run: the page's install block, marked with ``INSTALL_MARK`` (it creates ``.venv`` and
pip installs from the package registries, which `make test` has already done). In its place the test
puts the bin directory of the interpreter running it (Airflow, the provider, ``cutout-sandbox``) first on
PATH and the clone on PYTHONPATH, so the provider imported is the clone's, as the page's editable install
would make it. Everything else is the page's text, unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, install_script

PAGE = Path("docs") / "local-development.md"  # read in the clone: the page as a new user gets it
INSTALL_MARK = "<!-- local-development test: this block installs;"
BLOCK = re.compile(r"^(<!--[^\n]*-->\n)?```bash\n(.*?)^```$", re.M | re.S)


def page_script(clone: Path) -> str:
    """The page's bash blocks in order, its install block replaced by this test's environment."""
    parts = ["set -euo pipefail"]
    installs = 0
    for mark, body in BLOCK.findall((clone / PAGE).read_text()):
        if mark.startswith(INSTALL_MARK):
            installs += 1
            assert "pip install" in body and "activate" in body, body
            newest = install_script("echo $NEWEST_AIRFLOW")  # installed as make test installs it: pinned
            assert f'"apache-airflow=={newest}"' in body and f"--constraint constraints/airflow-{newest}.txt" in body
            assert (clone / "constraints" / f"airflow-{newest}.txt").is_file()
            bin_dir = os.path.dirname(sys.executable)
            body = f'export PATH={shlex.quote(bin_dir)}:"$PATH"\nexport PYTHONPATH={shlex.quote(str(clone))}\n'
        parts.append(body)
    assert installs == 1, "the page must have exactly one install block, marked for this test"
    assert len(parts) >= 10
    # After the page: the real-API connection it ends with is a valid cutout connection (nothing is sent).
    parts.append("python -c 'from airflow_provider_cutout.hooks.cutout import CutoutHook; "
                 'print("real API:", CutoutHook().base_url)\'')
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_closes(port: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.1)
    return False


def test_local_development_page_runs_from_a_fresh_clone(tmp_path):
    clone, home, tmp = tmp_path / "clone", tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "CATALOG_", "SANDBOX", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), SANDBOX_PORT=str(port))
    script = tmp_path / "page.sh"
    script.write_text(page_script(clone))

    started = time.monotonic()
    proc = subprocess.Popen(["bash", str(script)], cwd=clone, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
        sandbox_stopped = port_closes(port)  # by the page's last step, before the clean-up below
    finally:  # the sandbox the page started in the background, even when a block failed
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    print(f"the page ran in {time.monotonic() - started:.0f}s")
    assert proc.returncode == 0, out[-4000:]

    assert "Connection success!" in out
    plans = re.findall(r"Cutout batch plan: (\d+) items, (\d+) already stored .* (\d+) to edit for (\d+) credits", out)
    assert len(plans) == 2, out[-4000:]
    items = int(plans[0][0])
    assert items == 30
    assert plans[0][1:] == ("0", str(items), str(4 * items))  # first run: everything edited
    assert plans[1][1:] == (str(items - 1), "1", "4")  # after one photo was replaced: only that one
    assert "edited 1 item: sku-0007" in out
    ledgers = [tuple(map(int, m)) for m in re.findall(r"charges: (\d+) credits: (\d+) balance: (\d+)", out)]
    assert ledgers == [(items, 4 * items, 1000 - 4 * items), (items + 1, 4 * (items + 1), 1000 - 4 * (items + 1))]
    stored = sorted(p.name for p in tmp.glob("*/catalog-output/sku-*.png"))
    assert stored == [f"sku-{n:04d}.png" for n in range(1, items + 1)]
    assert "real API: https://www.cutout.pro" in out
    assert sandbox_stopped
