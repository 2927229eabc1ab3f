"""Human-readable summaries of what each stage did."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_ingest(report, console: Console) -> None:
    """Rows in, clean, quarantined (per rule), duplicates, versions, shard skew."""
    table = Table(title=f"ingest {report.dataset} ({report.run_id})", show_header=False)
    for label, value in [
        ("rows read", report.rows_read),
        ("rows clean", report.clean_rows),
        ("rows quarantined", report.quarantined),
        ("exact duplicates removed", report.duplicates_removed),
        ("clean table version", report.table_version),
        ("quarantine table version", report.quarantine_version),
        ("shard skew (max/mean)", f"{report.skew_ratio:.3f}" + ("  [red]WARNING: skewed[/red]" if report.skew_warning else "")),
        ("seconds", report.seconds),
    ]:
        table.add_row(label, str(value))
    for rule, count in report.rule_counts.items():
        table.add_row(f"  rule {rule}", str(count))
    table.add_row("rows per shard", ", ".join(f"{s}:{n}" for s, n in report.shard_counts.items()))
    console.print(table)
