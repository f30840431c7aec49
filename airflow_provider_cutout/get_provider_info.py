"""Provider metadata read by Airflow's providers manager (the ``apache_airflow_provider`` entry point).

It also holds the connection form's declarative metadata, the one place the hook's
``get_ui_field_behaviour`` reads too, so old and new Airflow UIs show the same form.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_cutout import __version__

HOOK_CLASS = "airflow_provider_cutout.hooks.cutout.CutoutHook"

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "login"],
    "relabeling": {"host": "Base URL", "password": "API Key", "port": "Port (optional)"},
    "placeholders": {
        "host": "https://www.cutout.pro (or the sandbox, e.g. http://127.0.0.1)",
        "password": "your Cutout.Pro API key",
        "port": "443, or the sandbox's port; used when the Base URL has none",
    },
}

def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow: name, versions, connection type, hooks, operators, links."""
    from airflow_provider_cutout.api.settings import conn_fields  # pydantic models: only when Airflow asks

    return {
        "package-name": "airflow-provider-cutout",
        "name": "Cutout.Pro",
        "description": "AI image edits with the Cutout.Pro Image Edit API (https://www.cutout.pro).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cutout.Pro",
                "external-doc-url": "https://www.cutout.pro/api-document",
                "tags": ["service"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "cutout",
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Cutout.Pro",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": conn_fields(),  # one field per setting, from ClientSettings
            }
        ],
        "hooks": [
            {"integration-name": "Cutout.Pro", "python-modules": ["airflow_provider_cutout.hooks.cutout"]}
        ],
        "operators": [
            {
                "integration-name": "Cutout.Pro",
                "python-modules": [
                    "airflow_provider_cutout.operators.image_edit",
                    "airflow_provider_cutout.operators.batch",
                    "airflow_provider_cutout.operators.review_gate",
                ],
            }
        ],
        "extra-links": [
            "airflow_provider_cutout.observability.links.CutoutResultLink",
            "airflow_provider_cutout.observability.links.CutoutGalleryLink",
        ],
    }
