"""The DAG the rendering tests run with dag.test(): a catalog written in the DAG file (texts without a template,
a prompt and the image URLs with one), and ``items`` as a template that pulls an upstream task's list."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator

with DAG("t_batch_rendering", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"out": "/tmp/unused", "cdn": "http://127.0.0.1", "prompt": "invert"}) as rendering:
    @task
    def pulled_catalog() -> list[dict]:
        return [{"key": "pulled-0", "image_urls": [f"{CutoutHook().base_url}/samples/lamp.png?w=41&h=31"]}]

    CutoutBatchImageEditOperator(task_id="literal", output_dir="{{ params.out }}/literal/", items=[
        {"key": f"item-{i}", "prompt": "{{ params.prompt }}" if i == 2 else "grayscale",
         "image_urls": [f"{{{{ params.cdn }}}}/samples/mug.png?w={40 + i}&h=30"]} for i in range(4)])
    pulled_catalog() >> CutoutBatchImageEditOperator(
        task_id="pulled", prompt="grayscale", output_dir="{{ params.out }}/pulled/",
        items="{{ ti.xcom_pull(task_ids='pulled_catalog') }}")
