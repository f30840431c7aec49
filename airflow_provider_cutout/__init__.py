"""Apache Airflow provider for the Cutout.Pro Image Edit API."""

__version__ = "0.2.0"
