"""One-edit DAGs for the fault matrix: the single operator (storing its result) and a one-item batch.
Both allow one Airflow retry, so the matrix shows which errors use it."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator

ARGS = {"retries": 1, "retry_delay": datetime.timedelta(seconds=0)}
START = datetime.datetime(2026, 1, 1)


@task
def source() -> str:
    return CutoutHook().base_url + "/samples/mug.png?w=48&h=40"


with DAG("t_fault_single", schedule=None, start_date=START, default_args=ARGS, params={"out": "/tmp/x"}) as single:
    CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls=source(), model="gpt-image-1",
                            output_path="{{ params.out }}/")


@task
def one_item(url: str) -> list[dict]:
    return [{"key": "only", "prompt": "grayscale", "image_urls": [url]}]


with DAG("t_fault_batch", schedule=None, start_date=START, default_args=ARGS,
         params={"out": "/tmp/x", "resend": False}) as batch:
    CutoutBatchImageEditOperator(task_id="edit", items=one_item(source()), output_dir="{{ params.out }}/",
                                 resend_in_doubt="{{ params.resend }}")
