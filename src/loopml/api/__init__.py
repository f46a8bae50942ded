"""The HTTP surface: Vertex-shaped, BigQuery-shaped, Pub/Sub- and GCS-shaped routes."""
