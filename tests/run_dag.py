"""Run one test DAG with ``dag.test()`` in its own process and print what it did as one JSON line.

Usage: python -m tests.run_dag MODULE:DAG CONF_JSON. The Airflow settings (home, metadata DB, the
connections) come from the environment of the test that starts it, so both share one database.
"""

from __future__ import annotations

import importlib
import json
import sys


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
    print(json.dumps({"run_id": run.run_id, "state": str(run.state), "batch": states, "summaries": summaries}))


if __name__ == "__main__":
    main()
