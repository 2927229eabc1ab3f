"""Operating shardlake with the tools its users already run: metrics, lineage, tracking."""
