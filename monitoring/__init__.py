"""Metrics, and the Prometheus, Alertmanager and Grafana files operators run."""
