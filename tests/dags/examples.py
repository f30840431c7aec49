"""Puts the example DAGs into the tests' DAGs folder, so dag.test() finds them serialized.

(The airflow DAG processor collects DAG objects at the top level of this module.)
"""

from example_dags.example_cutout_catalog_chunked import dag as example_cutout_catalog_chunked  # noqa: F401
from example_dags.example_cutout_catalog_refresh import dag as example_cutout_catalog_refresh  # noqa: F401
from example_dags.example_cutout_image_edit import dag as example_cutout_image_edit  # noqa: F401
from example_dags.example_cutout_minimal import example_cutout_minimal as _factory
from example_dags.example_cutout_publish import dag as example_cutout_publish  # noqa: F401
from example_dags.example_cutout_review import dag as example_cutout_review  # noqa: F401

example_cutout_minimal = _factory()
