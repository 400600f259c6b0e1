"""Outputs render the model: Prometheus exposition over HTTP (and OTLP push)."""
