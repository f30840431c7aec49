"""A catalog of ``n`` distinct edits in one batch task, or mapped over chunks of ``chunk`` items (Airflow
DAGs used by scripts/bench.py to measure the catalog state at 1,000 to 100,000 items).

The chunked DAGs differ in how the chunks reach the batch tasks: ``bench_scale_chunked`` maps over the
chunks of a mapped task (each batch task pulls its own chunk's XCom, the pattern docs/operators.md
recommends for large catalogs); ``bench_scale_one_xcom`` over the list one task returns (Airflow resolves
each mapped task's ``items`` by pulling that whole list).

``bench_scale_literal`` holds its catalog in the DAG file, as a DAG that builds its items at parse time does:
``CUTOUT_BENCH_LITERAL_N`` dicts, each with its own key, prompt and image URL (none by default, so the other
DAGs' runs, which parse this file too, do not pay for it)."""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items


def _items(start: int, stop: int) -> list[dict]:
    base = CutoutHook().base_url
    return [{"key": f"item-{i}", "image_urls": [f"{base}/samples/mug.png?w=16&h=16&n={i}"]} for i in range(start, stop)]


@task
def catalog(params=None) -> list[dict]:
    return _items(0, int(params["n"]))


@task
def chunks(params=None) -> list[list[dict]]:
    return chunk_items(_items(0, int(params["n"])), int(params["chunk"]))


@task
def chunk_numbers(params=None) -> list[int]:
    return list(range(-(-int(params["n"]) // int(params["chunk"]))))


@task
def chunk(number: int, params=None) -> list[dict]:
    size, n = int(params["chunk"]), int(params["n"])
    return _items(number * size, min(n, (number + 1) * size))


with DAG("bench_scale", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"n": 1000, "out": "/tmp/unused"}) as dag:
    CutoutBatchImageEditOperator(task_id="batch", items=catalog(), output_dir="{{ params.out }}/",
                                 prompt="grayscale", max_concurrency=32, progress_interval=60)

with DAG("bench_scale_literal", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"out": "/tmp/unused"}) as literal:
    _n = int(os.environ.get("CUTOUT_BENCH_LITERAL_N", "0"))
    _catalog = [{**item, "prompt": "grayscale"} for item in _items(0, _n)] if _n else []  # built while parsed
    CutoutBatchImageEditOperator(task_id="batch", items=_catalog, output_dir="{{ params.out }}/", max_concurrency=32,
                                 progress_interval=60)

with DAG("bench_scale_chunked", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"n": 1000, "chunk": 500, "out": "/tmp/unused"}) as chunked:
    CutoutBatchImageEditOperator.partial(task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale",
                                         max_concurrency=32, progress_interval=60,
                                         ).expand(items=chunk.expand(number=chunk_numbers()))

with DAG("bench_scale_one_xcom", schedule=None, start_date=datetime.datetime(2026, 1, 1),
         params={"n": 1000, "chunk": 500, "out": "/tmp/unused"}) as one_xcom:
    CutoutBatchImageEditOperator.partial(task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale",
                                         max_concurrency=32, progress_interval=60).expand(items=chunks())
