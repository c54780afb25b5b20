"""Observability: Prometheus metrics and access logs."""
