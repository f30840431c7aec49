"""Airflow plugins shipped by the provider (entry point ``airflow.plugins``): the "Cutout review" view."""
