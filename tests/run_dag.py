"""Run one test DAG with ``dag.test()`` in its own process and print what it did as one JSON line
(after ``MARK``).

Usage: python -m tests.run_dag MODULE:DAG CONF_JSON. The Airflow settings (the connections, a copy of
the migrated metadata DB) come from the test that starts it with ``spawn``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARK = "CUTOUT-TEST-RUN "  # the line with the run's outcome (listeners may print after it)


def spawn(dag: str, conf: dict[str, Any], prefix: tuple[str, ...] = (), *, cwd: Path = REPO,
          **env: str) -> subprocess.Popen[str]:
    """A DAG run in its own process with its own copy of the migrated metadata DB (two processes
    serializing DAGs into one sqlite file at once collide; Postgres is the deployment issue's), and
    this test's connections and ``env``; ``prefix`` runs it under a command (``unshare --pid ...``); ``cwd`` (first on
    its ``sys.path``) may hold another release's package."""
    home = Path(tempfile.mkdtemp(prefix="cutout-run-home-"))
    shutil.copy(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db", **env}
    # Output to files: a pipe that nobody reads while the test waits for the run (or kills it) fills and blocks it.
    out, err = (open(home / name, "w") for name in ("stdout.log", "stderr.log"))
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "tests.run_dag", dag, json.dumps(conf)], cwd=cwd, env=env,
                            stdout=out, stderr=err, text=True)
    out.close()
    err.close()
    proc.home = home  # type: ignore[attr-defined]  # its metadata DB, for tests that scan it
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    """The run's outcome; ``output`` holds what the process printed (its task logs)."""
    proc.wait(timeout=timeout)
    home = proc.home  # type: ignore[attr-defined]
    out, err = ((home / name).read_text() for name in ("stdout.log", "stderr.log"))
    assert proc.returncode == 0, f"the DAG run process ended with {proc.returncode}: {err[-3000:]}"
    run = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith(MARK))[len(MARK):])
    if run["state"] != "success":  # keep the run's log for the failure message
        log = Path(tempfile.mkstemp(prefix="cutout-failed-run-", suffix=".log")[1])
        log.write_text(out + err)
        run["log"] = f"{log}: " + " | ".join(line for line in err.splitlines() if "Cutout error" in line)[-1500:]
    run["output"] = out + err
    return run


def main() -> None:
    module, name = sys.argv[1].split(":")
    dag = getattr(importlib.import_module(module), name)
    run = dag.test(run_conf=json.loads(sys.argv[2]))

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids="batch",
                                                  key="return_value"))
        summaries = [XComModel.deserialize_value(row) for row in rows]
    states = sorted(str(ti.state) for ti in run.get_task_instances() if ti.task_id == "batch")
    import airflow_provider_cutout

    print(MARK + json.dumps({"run_id": run.run_id, "state": str(run.state), "batch": states, "summaries": summaries,
                             "package": airflow_provider_cutout.__file__}))


if __name__ == "__main__":
    main()
