"""Airflow discovers the provider through its entry point, and the ``cutout`` type yields the hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

from airflow_provider_cutout import __version__


def test_airflow_providers_list_shows_the_provider(airflow_db):
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        check=True, capture_output=True, text=True, env=os.environ.copy(),
    ).stdout
    providers = {p["package_name"]: p for p in json.loads(out[out.index("[") :])}
    assert providers["airflow-provider-cutout"]["version"] == __version__


def test_cutout_connection_type_resolves_to_the_hook(airflow_db):
    from airflow.providers_manager import ProvidersManager

    from airflow_provider_cutout.hooks.cutout import CutoutHook

    manager = ProvidersManager()
    hook_info = manager.hooks["cutout"]
    assert hook_info.hook_class_name == "airflow_provider_cutout.hooks.cutout.CutoutHook"
    assert hook_info.connection_id_attribute_name == "cutout_conn_id"
    # Airflow >= 3.2 reads the form's metadata from get_provider_info; 3.1 only from the hook, and
    # only when wtforms is installed (it comes with the FAB provider).
    if hasattr(manager, "_load_ui_metadata") or find_spec("wtforms"):
        behaviour = manager.field_behaviours["cutout"]
        assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key", "port": "Port (optional)"}
        assert set(behaviour["hidden_fields"]) == {"schema", "login"}

    from airflow.models.connection import Connection

    hook = Connection(conn_id="cutout_x", conn_type="cutout", host="http://127.0.0.1:1", password="k").get_hook()
    assert isinstance(hook, CutoutHook) and hook.cutout_conn_id == "cutout_x"
