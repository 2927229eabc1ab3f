"""What operators see of a run: live progress, metrics, lineage, experiment tracking."""
