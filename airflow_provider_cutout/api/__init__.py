"""Everything that speaks HTTP to the Cutout.Pro API: transport and retry policy, envelope, client,
downloads, source inspection, and the API's data (models, settings, URLs). No Airflow import."""
