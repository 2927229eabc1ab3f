"""What operators see of a run: live progress, Prometheus metrics, lineage, experiment tracking."""
