"""What the provider tells the outside: OpenLineage, metrics, and the extra links on a task's page."""
