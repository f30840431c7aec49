"""A chunked refresh behind a review gate nobody answers: after ``response_timeout`` the scheduler's sweep takes
the gate's default, "Publish approved only", and the publish task gets nothing (nobody approved anything)."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items
from airflow_provider_cutout.operators.review_gate import CutoutReviewGateOperator

with DAG("cutout_cluster_review", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"n": 4, "out": "/tmp/unused"}) as dag:

    @task
    def chunks(params=None) -> list[list[dict]]:
        base = CutoutHook().base_url
        items = [{"key": f"gated-{i}", "image_urls": [f"{base}/samples/mug.png?w={60 + i}&h=33"]}
                 for i in range(int(params["n"]))]
        return chunk_items(items, 2)

    catalog = chunks()
    refresh = CutoutBatchImageEditOperator.partial(
        task_id="refresh", output_dir="{{ params.out }}/", prompt="grayscale", pool="cutout_api",
    ).expand(items=catalog)
    gate = CutoutReviewGateOperator(task_id="gate", batch_task_id="refresh", items=catalog,
                                    response_timeout=datetime.timedelta(seconds=3))

    @task
    def publish(decision: dict) -> list[str]:
        return [item["key"] for item in decision["approved"]]

    refresh >> gate
    publish(gate.output)
