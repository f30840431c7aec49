"""DAGs the model of the catalog (tests/test_model.py) runs with dag.test(): the items come whole from the run's
conf. Two catalogs (two DAGs) may write one folder; a third maps the batch over chunks made by hand."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator

START = datetime.datetime(2026, 1, 1)
PARAMS = {"items": [], "chunks": [], "out": "/tmp/unused", "resend": False}
ARGS = {"retries": 0}


@task
def conf_items(params=None) -> list[dict]:
    return params["items"]


@task
def conf_chunks(params=None) -> list[list[dict]]:
    return params["chunks"]


def catalog(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS, default_args=ARGS) as dag:
        CutoutBatchImageEditOperator(task_id="batch", items=conf_items(), output_dir="{{ params.out }}/",
                                     prompt="grayscale", max_concurrency=1, max_failures=1, progress_interval=1.0,
                                     resend_in_doubt="{{ params.resend }}")
    return dag


model_a = catalog("t_model_a")
model_b = catalog("t_model_b")

with DAG("t_model_chunks", schedule=None, start_date=START, params=PARAMS, default_args=ARGS) as model_chunks:
    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=1, progress_interval=1.0,
    ).expand(items=conf_chunks())
