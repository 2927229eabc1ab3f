"""Human-readable summaries of what each stage did."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_ingest(report, console: Console) -> None:
    """Rows in, clean, quarantined (per rule), duplicates, versions, shard skew."""
    table = Table(title=f"ingest {report.dataset} ({report.run_id})", show_header=False)
    for label, value in [
        ("records read", report.rows_read),
        ("rows clean", report.clean_rows),
        ("rows quarantined", report.quarantined),
        ("exact duplicates removed", report.duplicates_removed),
        ("blank lines / repeated header lines", f"{report.blank_lines} / {report.header_lines}"),
        ("clean rows inserted / updated", f"{report.rows_inserted} / {report.rows_updated}"),
        ("clean table version", report.table_version),
        ("quarantine table version", report.quarantine_version),
        ("shard skew (max/mean)", f"{report.skew_ratio:.3f}" + ("  [red]WARNING: skewed[/red]" if report.skew_warning else "")),
        ("seconds", report.seconds),
    ]:
        table.add_row(label, str(value))
    for rule, count in report.rule_counts.items():
        table.add_row(f"  rule {rule}", str(count))
    for name, counts in report.joins.items():
        table.add_row(f"join {name}", ", ".join(f"{k} {v}" for k, v in counts.items()))
    table.add_row("rows per shard", ", ".join(f"{s}:{n}" for s, n in report.shard_counts.items()))
    console.print(table)


def print_infer(report, console: Console) -> None:
    """Predictions written, versions, and the reduce-stage summary per shard."""
    console.print(f"inference {report.model_version} on {report.source_table}@v{report.source_version} "
                  f"(logical date {report.logical_date}): scored {report.rows_scored}, inserted "
                  f"{report.rows_inserted}, updated {report.rows_updated}, predictions table v{report.predictions_version}, "
                  f"{report.seconds}s")
    if not report.summary:
        return
    columns = [c for c in report.summary[0] if c != "scope"]
    table = Table(title="reduce stage: summary per shard")
    table.add_column("scope")
    for column in columns:
        table.add_column(column, justify="right")
    for row in report.summary:
        table.add_row(row["scope"], *[f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c))
                                      for c in columns])
    console.print(table)
    _print_drift(report, console)
    _print_infer_extras(report, console)


def _print_drift(report, console: Console) -> None:
    """Only what drifted (rows new to the model) and what failed the sanity check; one line when all is well."""
    comparison = getattr(report, "comparison", None) or {}
    for name, check in (getattr(report, "drift", None) or {}).items():
        console.print(f"[red]DRIFT[/red] {name} on {check['rows']} rows new to the model: {check['now']:.4f} against "
                      f"{check['at_test']:.4f} at test, worse by {check['worse_by']:.4f} (allowed {check['allowed']:.4f})")
    for name, check in (getattr(report, "sanity_failed", None) or {}).items():
        console.print(f"[red]SANITY[/red] {name} on the training version's test split: {check['now']:.4f}, the card "
                      f"says {check['at_test']:.4f}: the card does not describe this model on this table")
    for name, check in (getattr(report, "distribution_drift", None) or {}).items():
        ks = f", KS {check['ks']:.3f} (allowed {check['ks_allowed']:.3f})" if "ks" in check else ""
        console.print(f"[red]DRIFT[/red] distribution of {name} on {check['rows']} rows new to the model: PSI "
                      f"{check['psi']:.3f} (allowed {check['psi_allowed']:.3f}){ks}")
    if "new_rows" not in comparison:
        console.print("drift: no labelled rows new to the model in this version, nothing to judge")
    elif not report.drift:
        console.print(f"drift: none on {next(iter(comparison['new_rows'].values()))['rows']} rows new to the model"
                      if comparison["new_rows"] else "drift: none")


def _print_infer_extras(report, console: Console) -> None:
    """Mode, the int8-against-float comparison and where the plot is."""
    console.print(f"mode: {getattr(report, 'mode', 'full')}")
    quantization = getattr(report, "quantization", None)
    if quantization:
        table = Table(title=f"int8 dynamic quantisation against float ({quantization['rows']} rows, "
                            f"{quantization['threads']} thread)")
        for column in ("metric", "float", "int8", "change"):
            table.add_column(column, justify="right")
        for name, value in quantization["float"].items():
            int8 = quantization["int8"][name]
            if name == "rows_per_s":
                table.add_row("rows/s", f"{value:,.0f}", f"{int8:,.0f}", f"{quantization['speedup']:.2f}x")
            else:
                table.add_row(name, f"{value:.4f}", f"{int8:.4f}", f"{int8 - value:+.4f}")
        console.print(table)
        console.print(f"score difference int8 - float: max {quantization['max_abs_score_diff']:.4g}, "
                      f"mean {quantization['mean_abs_score_diff']:.4g}")
    if getattr(report, "plot", None):
        console.print(f"score distribution: {report.plot}")
