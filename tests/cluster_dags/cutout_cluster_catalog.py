"""The chunked catalog refresh as the cluster tests trigger it through the REST API: ``n`` generated items
(each its own sandbox sample, so its own request fingerprint) in chunks of ``chunk_size``, mapped over
the Celery workers, every chunk in the ``cutout_api`` pool that caps the API calls of all DAGs."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items

NAMES = ["mug", "sneaker", "lamp", "chair", "bottle", "watch"]

with DAG(
    "cutout_cluster_catalog",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1),
    params={"n": 300, "chunk_size": 50, "out": "/tmp/unused", "resend_in_doubt": False},
    default_args={"retries": 1, "retry_delay": datetime.timedelta(seconds=1)},
) as dag:

    @task
    def chunks(params=None) -> list[dict]:
        base = CutoutHook().base_url
        items = [
            {"key": f"item-{i}", "image_urls": [f"{base}/samples/{NAMES[i % 6]}.png?w={40 + i % 40}&h={30 + i // 40}"]}
            for i in range(int(params["n"]))
        ]
        return [{"items": chunk, "resend_in_doubt": bool(params["resend_in_doubt"])}
                for chunk in chunk_items(items, int(params["chunk_size"]))]

    # [START howto_cutout_pool]
    CutoutBatchImageEditOperator.partial(
        task_id="refresh_chunk", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
        pool="cutout_api", progress_interval=2.0, heartbeat_timeout=30.0,
    ).expand_kwargs(chunks())
    # [END howto_cutout_pool]
