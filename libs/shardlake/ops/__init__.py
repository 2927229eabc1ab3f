"""Operating the platform: lineage, metrics and other reporting channels of the jobs."""
