"""DAGs the operator tests run with dag.test(); source images come from the sandbox the
connection points at, so nothing here knows a port at parse time."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, XComArg, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator

START = datetime.datetime(2026, 1, 1)


@task
def sample_urls(names: list[str], width: int = 120, height: int = 90) -> list[str]:
    base = CutoutHook().base_url
    return [f"{base}/samples/{name}.jpg?w={width}&h={height}" for name in names]


with DAG("t_chain", schedule=None, start_date=START, params={"out": "/tmp/unused", "ratio": "16:9"}) as chain:
    urls = sample_urls(["mug", "lamp"])

    @task
    def pick_prompt() -> str:
        return "mirror and grayscale"

    prompt = pick_prompt()
    plain = CutoutImageEditOperator(
        task_id="plain",
        prompt="{{ ti.xcom_pull(task_ids='pick_prompt') }}",
        image_urls=urls,
        model="qwen-image-edit-plus",
        aspect_ratio="{{ params.ratio }}",
        output_path="{{ params.out }}/plain/",
    )
    prompt >> plain
    mapped = CutoutImageEditOperator.partial(
        task_id="mapped", prompt="sepia", model="gpt-image-1", aspect_ratio="1:1",
        output_path="{{ params.out }}/mapped/",
    ).expand(image_urls=urls)

    @task
    def downstream(url: str, result: dict, mapped_urls: list[str]) -> dict:
        from airflow.sdk import ObjectStoragePath

        stored = ObjectStoragePath(result["stored_path"])
        return {"url": url, "size": stored.stat().st_size, "head": stored.read_bytes()[:8].hex(),
                "mapped": list(mapped_urls)}

    downstream(plain.output, XComArg(plain, key="cutout_result"), mapped.output)


with DAG("t_expand_kwargs", schedule=None, start_date=START) as expand_kwargs:
    @task
    def edits() -> list[dict]:
        base = CutoutHook().base_url
        return [
            {"prompt": "invert", "image_urls": f"{base}/samples/watch.png?w=50&h=50", "aspect_ratio": "original"},
            {"prompt": "blur", "image_urls": [f"{base}/samples/chair.png?w=80&h=40"], "aspect_ratio": "16:9"},
        ]

    CutoutImageEditOperator.partial(task_id="each", model="gemini-2.5-flash-image").expand_kwargs(edits())


with DAG("t_single", schedule=None, start_date=START, params={"model": "gpt-image-1"},
         default_args={"retries": 2, "retry_delay": datetime.timedelta(seconds=0)}) as single:
    CutoutImageEditOperator(
        task_id="edit", prompt="darken", image_urls=sample_urls(["bottle"]), model="{{ params.model }}",
    )



def stored_dag(dag_id: str, **kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, params={"out": "/tmp/unused/"}) as dag:
        CutoutImageEditOperator(task_id="edit", prompt="sepia", image_urls=sample_urls(["lamp"]), model="gpt-image-1",
                                output_path="{{ params.out }}", **kwargs)
    return dag


stored = stored_dag("t_stored")
stored_forced = stored_dag("t_stored_forced", force=True)

def stored_edit_dag(dag_id: str, **kwargs) -> DAG:
    """One edit stored at ``out/`` (a folder) or ``out/<file>`` (a file path)."""
    with DAG(dag_id, schedule=None, start_date=START, params={"out": "/tmp/unused", "file": ""}) as dag:
        CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls=sample_urls(["mug"]),
                                model="gpt-image-1", output_path="{{ params.out }}/{{ params.file }}", **kwargs)
    return dag


stored_edit = stored_edit_dag("t_single_stored_edit")
stored_edit_unchecked = stored_edit_dag("t_single_stored_edit_unchecked", check_sources=False)

with DAG("t_single_source", schedule=None, start_date=START, params={"url": "", "model": "seedream-4.0"}) as one_source:
    CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls="{{ params.url }}",
                            model="{{ params.model }}")


def lamp_dag(dag_id: str, **kwargs) -> DAG:
    """One edit stored in the folder ``out/``."""
    with DAG(dag_id, schedule=None, start_date=START, params={"out": "/tmp/unused"}) as dag:
        CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls=sample_urls(["lamp"]),
                                model="gpt-image-1", output_path="{{ params.out }}/", **kwargs)
    return dag


lamp = lamp_dag("t_single_lamp")
lamp_forced = lamp_dag("t_single_lamp_forced", force=True)

with DAG("t_single_timed", schedule=None, start_date=START,
         default_args={"retries": 1, "retry_delay": datetime.timedelta(seconds=0)}) as timed_single:
    CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls=sample_urls(["chair"]), model="gpt-image-1",
                            execution_timeout=datetime.timedelta(seconds=2))

with DAG("t_single_stoppable", schedule=None, start_date=START, default_args={"retries": 0}) as stoppable_single:
    CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls=sample_urls(["watch"]), model="gpt-image-1")


with DAG("t_single_url_stored", schedule=None, start_date=START, params={"url": "", "out": "/tmp/unused"},
         default_args={"retries": 0}) as url_stored:
    CutoutImageEditOperator(task_id="edit", prompt="grayscale", image_urls="{{ params.url }}", model="gpt-image-1",
                            output_path="{{ params.out }}/")
