"""Two teams' DAGs for the review view's security tests (tests/test_review_security.py): each takes its folder
from ``params.out``, as a DAG that lets run conf choose it would."""

from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
from tests.dags.batch_dags import START


@task
def team_items(team: str) -> list[dict]:
    base = CutoutHook().base_url
    keys = [f"{team}-0", f"{team}-1", f"{team}-2"]
    return [{"key": key, "image_urls": [f"{base}/samples/mug.png?w={40 + i}&h=30&team={team}"]}
            for i, key in enumerate(keys)]


with DAG("t_team_a", schedule=None, start_date=START, params={"out": "/tmp/unused"}) as team_a:
    CutoutBatchImageEditOperator(task_id="batch", items=team_items("a"), output_dir="{{ params.out }}/",
                                 prompt="grayscale")

with DAG("t_team_b", schedule=None, start_date=START, params={"out": "/tmp/unused"}) as team_b:
    CutoutBatchImageEditOperator(task_id="batch", items=team_items("b"), output_dir="{{ params.out }}/",
                                 prompt="grayscale")
