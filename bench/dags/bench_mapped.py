"""The first thing a user would reach for: one mapped CutoutImageEditOperator task per image (an
airflow DAG used by scripts/bench.py to compare with the batch operator)."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator


@task
def source_urls(params=None) -> list[str]:
    return list(params["urls"])


with DAG("bench_mapped", schedule=None, start_date=datetime.datetime(2026, 1, 1), params={"urls": []}) as dag:
    CutoutImageEditOperator.partial(task_id="edit", prompt="grayscale", model="gpt-image-1").expand(
        image_urls=source_urls()
    )
