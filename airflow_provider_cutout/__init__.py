"""Apache Airflow provider for the Cutout.Pro Image Edit API."""

import logging

__version__ = "0.2.0"

# The Azure SDK logs every HTTP request it makes for abfs:// (headers included) at INFO, into the task log: kept to
# warnings, unless the deployment set that logger's level itself.
_AZURE_HTTP = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
if _AZURE_HTTP.level == logging.NOTSET:
    _AZURE_HTTP.setLevel(logging.WARNING)
