"""How CutoutBatchImageEditOperator's templated fields render: a catalog written in the DAG file renders to
itself without a Jinja compile per text, and everything else renders as Airflow renders it: templates inside
items, ``items`` as a template or an XComArg, native rendering, template files."""

from __future__ import annotations

import datetime

import jinja2
import pytest
from airflow.sdk import DAG, BaseOperator

from airflow_provider_cutout.operators._common import as_list
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
from tests.conftest import states, xcoms

START = datetime.datetime(2026, 1, 1)


def catalog(n: int) -> list[dict]:
    """``n`` items as a DAG that builds its catalog at parse time writes them: a key, a prompt, an image each."""
    return [{"key": f"item-{i}", "prompt": f"grayscale, item {i}", "image_urls": [f"https://cdn.example.com/p/{i}.png"]}
            for i in range(n)]


@pytest.fixture
def compiled(monkeypatch) -> list[str]:
    """The sources Jinja compiles (``from_string`` and ``get_template`` both compile through here)."""
    sources: list[str] = []
    compile_ = jinja2.Environment.compile

    def counting(env, source, *args, **kwargs):
        sources.append(source)
        return compile_(env, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return sources


def batch_in(dag: DAG, items, **kwargs) -> CutoutBatchImageEditOperator:
    with dag:
        return CutoutBatchImageEditOperator(task_id="b", items=items, output_dir="{{ params.out }}/", **kwargs)


def test_a_catalog_written_in_the_dag_file_renders_to_itself_without_a_compile_per_text(compiled):
    op = batch_in(DAG("literal", schedule=None, start_date=START), catalog(5000), prompt="grayscale")
    op.render_template_fields({"params": {"out": "/tmp/x"}})
    assert op.items == catalog(5000) and op.output_dir == "/tmp/x/" and op.prompt == "grayscale"
    assert compiled == ["{{ params.out }}/"]  # one compile in all, not 15,000


def test_templates_inside_items_still_render_and_only_they_are_compiled(compiled):
    items = catalog(100)
    items[3]["prompt"] = "{{ params.prompt }}"
    items[5]["image_urls"] = ["{{ params.cdn }}/p/5.png", "https://cdn.example.com/p/5b.png"]
    items[7]["key"] = "{# the old key was 7 #}item-seven"
    items[9]["aspect_ratio"] = "{% if params.square %}1:1{% else %}original{% endif %}"
    op = batch_in(DAG("inside", schedule=None, start_date=START), items, prompt="grayscale")
    op.render_template_fields({"params": {"out": "/tmp/x", "prompt": "invert", "cdn": "https://img.example.com",
                                          "square": True}})
    want = catalog(100)
    want[3]["prompt"] = "invert"
    want[5]["image_urls"] = ["https://img.example.com/p/5.png", "https://cdn.example.com/p/5b.png"]
    want[7]["key"] = "item-seven"
    want[9]["aspect_ratio"] = "1:1"
    assert op.items == want
    assert sorted(compiled) == sorted(["{{ params.out }}/", items[3]["prompt"], items[5]["image_urls"][0],
                                       items[7]["key"], items[9]["aspect_ratio"]])


TEXTS = ["item-1", "", "123", "None", "True", "[1, 2]", "{'a': 1}", "'quoted'", " 1", "0x10", "<b>&amp;</b>",
         "line\n", "two\r\nlines", "{{ 1 + 1 }}", "{# a note #}x", "{% if true %}y{% endif %}", "[[ 40 + 2 ]]",
         "## not a comment here", "}}", "{ a }"]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("jinja", [{}, {"variable_start_string": "[[", "variable_end_string": "]]"},
                                   {"line_statement_prefix": "%%", "line_comment_prefix": "##"},
                                   {"autoescape": True}, {"keep_trailing_newline": True}])
def test_every_text_renders_as_airflow_renders_it(native, jinja):
    # as a text ("123", "a\n"), or with native rendering as a value (123, None for ""), with the DAG's own
    # delimiters and options: what the shortcut gives is what Airflow's own rendering gives, type included
    dag = DAG("texts", schedule=None, start_date=START, render_template_as_native_obj=native,
              jinja_environment_kwargs=jinja)
    op = batch_in(dag, "{{ params.catalog }}")
    env = op.get_template_env()
    for text in TEXTS:
        ours, airflows = op.render_template(text, {}, env), BaseOperator.render_template(op, text, {}, env)
        assert (ours, type(ours)) == (airflows, type(airflows)), text


@pytest.mark.skipif(not hasattr(BaseOperator, "render_template_as_native_obj"),
                    reason="an operator chooses native rendering itself since Airflow 3.2")
@pytest.mark.parametrize(("dag_native", "task_native"), [(False, True), (True, False)])
def test_the_tasks_own_choice_of_native_rendering_is_followed(dag_native, task_native):
    dag = DAG("own", schedule=None, start_date=START, render_template_as_native_obj=dag_native)
    op = batch_in(dag, "{{ params.catalog }}", render_template_as_native_obj=task_native)
    env = op.get_template_env()
    assert op.render_template("123", {}, env) == (123 if task_native else "123")
    assert BaseOperator.render_template(op, "123", {}, env) == op.render_template("123", {}, env)


@pytest.mark.parametrize("native", [False, True])
def test_items_as_a_template_render_as_before(native):
    dag = DAG("whole", schedule=None, start_date=START, render_template_as_native_obj=native)
    op = batch_in(dag, "{{ params.catalog }}")
    op.render_template_fields({"params": {"out": "/tmp/x", "catalog": catalog(3)}})
    assert op.items == (catalog(3) if native else str(catalog(3)))  # a text Jinja renders is read as a list
    assert as_list(op.items) == catalog(3)


def test_a_template_file_named_in_an_item_is_still_read_as_one(tmp_path, compiled):
    class WithFiles(CutoutBatchImageEditOperator):
        template_ext = (".prompt",)

    (tmp_path / "look.prompt").write_text("{{ params.look }}, white background")
    with DAG("files", schedule=None, start_date=START, template_searchpath=[str(tmp_path)]):
        op = WithFiles(task_id="b", items=[{**catalog(1)[0], "prompt": "look.prompt"}], output_dir="/tmp/x/")
    op.render_template_fields({"params": {"look": "grayscale"}})
    assert op.items[0]["prompt"] == "grayscale, white background" and op.items[0]["key"] == "item-0"
    assert compiled == ["{{ params.look }}, white background"]


def test_a_literal_catalog_and_a_pulled_one_run(sandbox, airflow_db, tmp_path):
    from tests.dags.rendering_dags import rendering

    run = rendering.test(run_conf={"out": str(tmp_path), "cdn": sandbox.url, "prompt": "invert"})
    assert states(run)["literal"] == [("success", 1)] and states(run)["pulled"] == [("success", 1)]
    assert xcoms(run, "literal")[-1]["edited"] == 4 and xcoms(run, "pulled")[-1]["edited"] == 1
    operations = sorted(tuple(call["operations"]) for call in sandbox.ledger()["calls"] if call["path"] == "edit")
    assert operations == [("grayscale",)] * 4 + [("invert",)]  # item-2's prompt rendered from the run's params
