"""Docs match the code: quoted snippets, public names, and the tables built from the code's own data."""

from __future__ import annotations

import importlib
import inspect
import re
import sys

import pytest

from tests.conftest import REPO

PAGES = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def test_snippets_match_their_sources():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import docs_snippets
    finally:
        sys.path.pop(0)
    assert docs_snippets.main(check=True) == 0
    quoted = sum(len(docs_snippets.BLOCK.findall(p.read_text())) for p in PAGES)
    assert quoted >= 6


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


#: Module paths the docs name as removed (the changelog and index.md say where they went).
REMOVED = {f"airflow_provider_cutout.{name}" for name in ("client", "settings", "links", "lineage")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_public_name_mentioned_exists(page):
    text = page.read_text()
    for dotted in set(re.findall(r"airflow_provider_cutout(?:\.[A-Za-z_]\w*)+", text)) - REMOVED:
        _resolve(dotted.rstrip("."))
    for gone in REMOVED:
        with pytest.raises(ImportError):
            importlib.import_module(gone)
    from airflow_provider_cutout import exceptions
    from airflow_provider_cutout.hooks.cutout import CutoutHook
    from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
    from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator
    from airflow_provider_cutout.operators.review_gate import CutoutReviewGateOperator
    from airflow_provider_cutout.plugins.review import CutoutReviewPlugin

    known = {name for name in dir(exceptions) if not name.startswith("_")}
    known |= {"CutoutHook", "CutoutImageEditOperator", "CutoutBatchImageEditOperator", "CutoutResultLink",
              "CutoutGalleryLink", "CutoutClient", "CutoutEditRunFacet", CutoutReviewPlugin.__name__,
              CutoutReviewGateOperator.__name__}
    for name in set(re.findall(r"`(Cutout\w+)", text)):
        assert name in known, f"{page.name} mentions {name}, which does not exist"
    for method in set(re.findall(r"CutoutHook\.(\w+)", text)):
        assert hasattr(CutoutHook, method), method
    for op in (CutoutImageEditOperator, CutoutBatchImageEditOperator, CutoutReviewGateOperator):
        for param in set(re.findall(rf"{op.__name__}\((\w+)=", text)):
            assert param in inspect.signature(op.__init__).parameters, param


def test_models_table_matches_the_registry():
    from airflow_provider_cutout.models import MODELS

    rows = re.findall(r"^\| ([\w.-]+) \| (\d+) \| (\d+) \| ([^|]+) \|", (REPO / "docs" / "models.md").read_text(), re.M)
    table = {name: (int(credits), int(max_images), tuple(r.strip() for r in ratios.split(",")))
             for name, credits, max_images, ratios in rows}
    assert table == {m.name: (m.credits, m.max_images, m.aspect_ratios) for m in MODELS.values()}


def test_operator_parameter_tables_list_every_parameter():
    from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
    from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator
    from airflow_provider_cutout.operators.review_gate import CutoutReviewGateOperator

    text = (REPO / "docs" / "operators.md").read_text()
    for op in (CutoutImageEditOperator, CutoutBatchImageEditOperator, CutoutReviewGateOperator):
        params = [p for p in inspect.signature(op.__init__).parameters if p not in ("self", "kwargs")]
        assert len(params) >= 7
        for param in params:
            assert f"| `{param}` |" in text, f"{op.__name__}.{param} is not documented"


def test_connection_extras_table_lists_every_setting():
    from airflow_provider_cutout.api.settings import ClientSettings

    text = (REPO / "docs" / "connection.md").read_text()
    for name, field in ClientSettings.model_fields.items():
        if name == "base_url":
            continue
        default = str(field.default).lower() if isinstance(field.default, bool) else f"{field.default:.15g}"
        assert f"| `{name}` | {default} |" in text, name


def test_sandbox_tables_list_every_keyword_and_fault():
    from airflow_provider_cutout.sandbox import FAULT_KINDS
    from airflow_provider_cutout.sandbox.edits import KEYWORDS

    text = (REPO / "docs" / "sandbox.md").read_text()
    for _, name, _ in KEYWORDS:
        assert f"| `{name}`" in text
    for kind in FAULT_KINDS:
        assert f"| `{kind}` |" in text


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert command in readme and f"{command.split()[1]}:" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_architecture_names_every_module_and_layer():
    """docs/architecture.md is the map: each module of the layers is in its table, each layer in its picture
    and in the import-linter contract."""
    import tomllib

    text = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "airflow_provider_cutout"
    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {name.strip().removeprefix("airflow_provider_cutout.") for layer in layers for name in layer.split("|")}
    folders = {p.name for p in package.iterdir() if (p / "__init__.py").exists()} - {"sandbox"}
    assert folders <= named, f"layers missing from the import-linter contract: {folders - named}"
    for folder in folders:
        assert f"{folder}/" in text, f"docs/architecture.md does not show the layer {folder}/"
        for module in (package / folder).glob("*.py"):
            if module.name != "__init__.py":
                assert f"`{folder}/{module.name}`" in text, f"docs/architecture.md does not map {folder}/{module.name}"


def test_the_cost_safety_table_names_tests_that_exist():
    text = (REPO / "docs" / "cost-safety.md").read_text()
    table = text[text.index("## What can go wrong, and the test that shows it"):]
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", table)
    assert len(named) >= 15
    for module, name in named:
        assert f"def {name}(" in (REPO / "tests" / module).read_text(), f"{module}::{name} does not exist"
