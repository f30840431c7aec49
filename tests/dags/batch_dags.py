"""DAGs the batch tests run with dag.test(): items are generated from params at run time, each
with its own small sandbox sample image (so each has its own request fingerprint)."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items

START = datetime.datetime(2026, 1, 1)
PARAMS = {"n": 10, "out": "/tmp/unused", "changed": "", "invalid": False, "max_credits": None, "max_failures": 0,
          "validators": "", "big": False}


@task
def make_items(params=None) -> list[dict]:
    base = CutoutHook().base_url
    names = ["mug", "sneaker", "lamp", "chair", "bottle", "watch"]
    server = f"&validators={params['validators']}" if params.get("validators") else ""  # which validators it gives
    items = [
        {
            "key": f"item-{i}",
            "prompt": "invert" if params["changed"] == f"item-{i}" else "grayscale",
            "image_urls": [f"{base}/samples/{names[i % 6]}.png?w={40 + i % 40}&h={30 + i // 40}{server}"
                           if not params.get("big") else  # more than 128 KiB, a replacement changes its last bytes
                           f"{base}/samples/{names[i % 6]}.png?w={1280 + i}&h=960&grain=1{server}"],
        }
        for i in range(int(params["n"]))
    ]
    if params["invalid"]:
        items += [
            {"key": "bad-model", "image_urls": [f"{base}/samples/mug.png"], "model": "gpt-9"},
            {"key": "bad-url", "image_urls": ["http://example.com/a.png"]},
            {"prompt": "no key", "image_urls": [f"{base}/samples/mug.png"]},
        ]
    return items


def batch_dag(dag_id: str, **operator_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=PARAMS,
             default_args={"retries": 2, "retry_delay": datetime.timedelta(seconds=0)}) as dag:
        CutoutBatchImageEditOperator(
            task_id="batch", items=make_items(), output_dir="{{ params.out }}/", prompt="grayscale",
            progress_interval=1.0, **operator_kwargs,
        )
    return dag


batch = batch_dag("t_batch", max_concurrency=8)
conditional = batch_dag("t_batch_conditional", max_concurrency=8)  # run with params.validators set
budget = batch_dag("t_batch_budget", max_credits=10)
templated = batch_dag("t_batch_templated", max_credits="{{ params.max_credits }}",
                      max_failures="{{ params.max_failures }}")
slow = batch_dag("t_batch_slow", max_concurrency=4)
balance_checked = batch_dag("t_batch_balance", check_balance=True)
tolerant = batch_dag("t_batch_tolerant", max_failures=0.5, max_concurrency=1)
serial = batch_dag("t_batch_serial", max_concurrency=1)
overlapping = batch_dag("t_batch_overlapping", max_concurrency=4)
killed = batch_dag("t_batch_killed", max_concurrency=4)
killed_resend = batch_dag("t_batch_killed_resend", max_concurrency=4, resend_in_doubt=True)


with DAG("t_batch_shared_chunks", schedule=None, start_date=START, params=PARAMS) as shared_chunks:
    @task
    def chunks_sharing_item_0(items: list[dict]) -> list[list[dict]]:
        return [items[: len(items) // 2 + 1], items[len(items) // 2 :] + items[:1]]

    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
    ).expand(items=chunks_sharing_item_0(make_items()))

with DAG("t_batch_key_in_two_chunks", schedule=None, start_date=START, params=PARAMS) as key_in_two_chunks:
    @task
    def chunks_listing_item_0_twice(items: list[dict]) -> list[list[dict]]:  # by hand, not with chunk_items
        return [items[:2], [{**items[0], "prompt": "invert"}, *items[2:]]]

    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
    ).expand(items=chunks_listing_item_0_twice(make_items()))
with DAG("t_batch_follower_in_two_chunks", schedule=None, start_date=START, params=PARAMS) as follower_in_two_chunks:
    @task
    def chunks_where_item_0_follows(items: list[dict]) -> list[list[dict]]:  # by hand, not with chunk_items
        """In each chunk item-0 copies the edit of the item before it (a follower): item-2's in the first, item-1's
        in the second."""
        return [[items[2], {**items[2], "key": "item-0"}], [items[1], {**items[1], "key": "item-0"}]]

    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
    ).expand(items=chunks_where_item_0_follows(make_items()))

with DAG("t_batch_key_twice_in_order", schedule=None, start_date=START,
         params={**PARAMS, "first": "invert", "second": "grayscale"}) as key_twice_in_order:
    @task
    def item_0_in_two_chunks(items: list[dict], params=None) -> list[list[dict]]:  # by hand, not with chunk_items
        """item-0 in both chunks, with ``params.first``'s prompt in the first and ``params.second``'s in the other."""
        return [[{**items[0], "prompt": params["first"]}], [{**items[0], "prompt": params["second"]}]]

    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
    ).expand(items=item_0_in_two_chunks(make_items()))

impatient = batch_dag("t_batch_impatient", claim_wait_timeout=1.0)
timed = batch_dag("t_batch_timed", max_concurrency=4, retries=0, execution_timeout=datetime.timedelta(seconds=4))
stoppable = batch_dag("t_batch_stoppable", max_concurrency=4, retries=0)
signed_gallery = batch_dag("t_batch_signed_gallery", gallery_link_expiry=900)
unconnected = batch_dag("t_batch_unconnected", cutout_conn_id="cutout_prod")
storm = batch_dag("t_batch_storm", max_concurrency=16)  # more threads than a rate-limited account takes


with DAG("t_batch_sources", schedule=None, start_date=START, params={"out": "/tmp/unused", "check": True}) as sources:
    @task
    def items_with_bad_sources() -> list[dict]:
        base = CutoutHook().base_url
        return [
            {"key": "good", "image_urls": [f"{base}/samples/mug.jpg?w=1280&h=960"]},
            {"key": "login-page", "image_urls": [f"{base}/pages/login.html"]},
            {"key": "gone", "image_urls": [f"{base}/samples/gone/nothing.png"]},
            {"key": "too-small", "image_urls": [f"{base}/samples/lamp.png?w=100&h=100"], "model": "seedream-4.0"},
        ]

    CutoutBatchImageEditOperator(task_id="batch", items=items_with_bad_sources(), output_dir="{{ params.out }}/",
                                 prompt="grayscale")


with DAG("t_batch_some_bad", schedule=None, start_date=START,
         params={"out": "/tmp/unused", "max_failures": 0}) as some_bad:
    @task
    def catalog_with_bad_items() -> list[dict]:
        base = CutoutHook().base_url
        return [
            *({"key": f"good-{i}", "image_urls": [f"{base}/samples/mug.png?w={40 + i}&h=40"]} for i in range(4)),
            {"key": "login-page", "image_urls": [f"{base}/pages/login.html"]},
            {"key": "gone", "image_urls": [f"{base}/samples/gone/nothing.png"]},
            {"key": "bad-model", "image_urls": [f"{base}/samples/lamp.png"], "model": "gpt-9"},
        ]

    CutoutBatchImageEditOperator(task_id="batch", items=catalog_with_bad_items(), output_dir="{{ params.out }}/",
                                 prompt="grayscale", max_failures="{{ params.max_failures }}")
unchecked = batch_dag("t_batch_unchecked", check_sources=False)


S3_PARAMS = {"out": "/tmp/unused", "sources": []}


@task
def items_from_params(params=None) -> list[dict]:
    return [{"key": f"photo-{i}", "image_urls": [uri]} for i, uri in enumerate(params["sources"])]


@task
def items_in_folder(params=None) -> list[dict]:
    """``n`` photos ``p0000.jpg``... in the bucket folder ``params.folder``."""
    return [{"key": f"photo-{i}", "image_urls": [f"s3://aws_default@catalog/{params['folder']}/p{i:04d}.jpg"]}
            for i in range(int(params["n"]))]


def s3_dag(dag_id: str, items, params: dict, **operator_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params=params) as dag:
        CutoutBatchImageEditOperator(task_id="batch", items=items(), output_dir="{{ params.out }}/",
                                     prompt="grayscale", model="seedream-4.0", **operator_kwargs)
    return dag


s3_sources = s3_dag("t_batch_s3_sources", items_from_params, S3_PARAMS)
s3_catalog = s3_dag("t_batch_s3_catalog", items_in_folder, {"out": "/tmp/unused", "folder": "src", "n": 1},
                    max_concurrency=32, progress_interval=60)


with DAG("t_batch_catalog_chunks", schedule=None, start_date=START,
         params={"out": "/tmp/unused", "items": [], "size": 2}) as catalog_chunks:
    @task
    def chunked(params=None) -> list[list[dict]]:
        """The items of the run's conf (paths on the sandbox), in chunks of ``size``."""
        base = CutoutHook().base_url
        items = [{**item, "image_urls": [base + url for url in item["image_urls"]]} for item in params["items"]]
        return chunk_items(items, int(params["size"]))

    CutoutBatchImageEditOperator.partial(
        task_id="batch", output_dir="{{ params.out }}/", prompt="grayscale", max_concurrency=4,
    ).expand(items=chunked())


#: Item keys and a prompt that would run script if any page showed them unescaped, and keys shaped like paths.
HOSTILE_KEYS = ("<script>window.__pwned='key'</script>", "<img src=x onerror=\"window.__pwned='img'\">",
                "../../../../etc/passwd", "javascript:window.__pwned='url'")
HOSTILE_PROMPT = "grayscale <script>window.__pwned='prompt'</script>"


@task
def review_items(params=None) -> list[dict]:
    """``n`` plain items and the hostile ones, each with its own photo."""
    base = CutoutHook().base_url
    keys = [f"item-{i}" for i in range(int(params["n"]))] + list(HOSTILE_KEYS)
    return [{"key": key, "prompt": HOSTILE_PROMPT if key in HOSTILE_KEYS else "grayscale",
             "image_urls": [f"{base}/samples/mug.png?w={40 + i}&h=30"]} for i, key in enumerate(keys)]


with DAG("t_batch_review", schedule=None, start_date=START, params={"n": 6, "out": "/tmp/unused"}) as review:
    CutoutBatchImageEditOperator(task_id="batch", items=review_items(), output_dir="{{ params.out }}/",
                                 prompt="grayscale", max_failures=0.5, max_concurrency=2)
