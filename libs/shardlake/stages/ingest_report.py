"""The ingest's accounting: its report, the counts of the staged rows, and the checks on them.

Every record read ends in exactly one fate (clean, invalid, duplicate, superseded, conflict);
the records are counted as they are read (an observation, before any join), the fates from the
staged rows (``staged_accounting``), and the two must agree, or the run writes nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shardlake.config import DatasetSpec, JoinSpec
from shardlake.transforms import clean as C
from shardlake.transforms import parse as P
from shardlake.transforms.stats import fill_aggregates, fill_values_from, is_training


class IngestError(RuntimeError):
    """The ingest refused to write: bad rows in fail_fast mode, a join source that is not unique,
    or accounting that does not add up."""


@dataclass
class IngestReport:
    run_id: str
    dataset: str
    rows_read: int = 0
    clean_rows: int = 0
    quarantined: int = 0
    duplicates_removed: int = 0
    rule_counts: dict[str, int] = field(default_factory=dict)
    shard_counts: dict[int, int] = field(default_factory=dict)
    skew_ratio: float = 0.0
    skew_warning: bool = False
    table_version: int | None = None
    quarantine_version: int | None = None
    fill_values: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    invalid: int = 0
    superseded: int = 0
    conflicts: int = 0
    blank_lines: int = 0
    header_lines: int = 0
    write_mode: str = ""
    rows_merged: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    quarantine_inserted: int = 0
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    joins: dict[str, dict[str, int]] = field(default_factory=dict)
    source_path: str = ""  # as read: a path template rendered for the run's data interval
    logical_date: str | None = None  # the data interval [logical_date, interval_end) the run was given
    interval_end: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


FATES = (C.CLEAN, C.INVALID, C.DUPLICATE, C.SUPERSEDED, C.CONFLICT)


def required_columns(spec: DatasetSpec) -> list[str]:
    return list(dict.fromkeys([*spec.key, *spec.rules.required]))


def all_rule_names(spec: DatasetSpec) -> list[str]:
    """Every rule name a row of this dataset can break (parse, type and declared rules)."""
    rules = spec.rules
    return [P.MALFORMED, P.ENCODING, *[f"type:{c}" for c in spec.column_names],
            *C.rule_names(required_columns(spec), rules.ranges, rules.allowed, rules.patterns, rules.finite)]


def shard_skew(counts: dict[int, int]) -> float:
    """max/mean of rows per shard (1.0 is perfectly even)."""
    if not counts:
        return 0.0
    mean = sum(counts.values()) / len(counts)
    return max(counts.values()) / mean if mean else 0.0


def join_summary(parsed: DataFrame, join: JoinSpec) -> dict[str, int]:
    """What a join source held: records, rows that did not parse, blank/header lines, duplicate keys.

    ``duplicate_keys`` counts rows beyond the first of a key (exact copies and conflicting rows
    alike): the rows a unique join source must not have.
    """
    kind, ok = F.col(P.RECORD_KIND), F.size(F.col(P.PARSE_ERRORS)) == 0
    usable = (kind == P.RECORD) & ok
    # One job: a struct of the keys is never null, so keys holding nulls count as values too.
    row = parsed.agg(
        F.count(F.when(kind == P.RECORD, 1)).alias("records"),
        F.count(F.when((kind == P.RECORD) & ~ok, 1)).alias("parse_errors"),
        F.count(F.when(kind != P.RECORD, 1)).alias("blank_or_header_lines"),
        F.count(F.when(usable, 1)).alias("_usable"),
        F.count_distinct(F.when(usable, F.struct(*list(join.keys.values())))).alias("_keys"),
    ).first().asDict()
    row["duplicate_keys"] = row.pop("_usable") - row.pop("_keys")
    row["used"] = row["records"] - row["parse_errors"] - (row["duplicate_keys"] if join.dedupe else 0)
    return {k: int(v) for k, v in row.items()}


def staged_accounting(staged: DataFrame, rule_names: list[str], fill_spec: dict,
                      cluster_by: list[str]) -> tuple[dict, dict[str, dict[str, int]]]:
    """The whole report's aggregates, from the staged rows: rows per fate and per source file, rows
    per broken rule, fill statistics and the clean rows' range of each ``cluster_by`` column.

    Three small aggregations over the staged Parquet files, each reading only the columns it
    needs: cheaper than observing the same aggregates while the rows are staged, which Spark
    evaluates row by row without code generation (measured at 1M rows: ~0.8 s of a 13 s
    staging pass with its accounting). Returns
    the aggregates by name (``fate:``, ``rule:``, ``fill:``, ``min:``/``max:``) and the fates of
    each source file. Fill statistics use the clean rows of the training split only, so nothing
    is learnt from validation or test rows.
    """
    fate = F.col(C.FATE)
    files: dict[str, dict[str, int]] = {}
    for row in staged.groupBy("_source_file", C.FATE).count().collect():
        files.setdefault(row["_source_file"], {})[row[C.FATE]] = int(row["count"])
    counts: dict = {f"fate:{name}": sum(f.get(name, 0) for f in files.values()) for name in FATES}
    # Only invalid rows carry violations, each rule once.
    broken = staged.where(F.size(F.col(C.VIOLATIONS)) > 0).select(F.explode(F.array_distinct(C.VIOLATIONS)).alias("r"))
    per_rule = {r["r"]: int(r["count"]) for r in broken.groupBy("r").count().collect()}
    counts.update({f"rule:{rule}": per_rule.get(rule, 0) for rule in rule_names})
    clean = staged.where(fate == F.lit(C.CLEAN))
    ranges = [f(F.col(c)).alias(f"{f.__name__}:{c}") for c in cluster_by for f in (F.min, F.max)]
    aggregates = [*fill_aggregates(fill_spec, where=is_training()), *ranges]
    if aggregates:
        counts.update(clean.agg(*aggregates).first().asDict())
    return counts, files


def cluster_ranges(row: dict, cluster_by: list[str]) -> dict[str, tuple[object, object]]:
    """The clean rows' (min, max) of each ``cluster_by`` column: what a MERGE prunes the table by."""
    return {c: (row[f"min:{c}"], row[f"max:{c}"]) for c in cluster_by}


def fill_report(report: IngestReport, row: dict, spec: DatasetSpec, fill_spec: dict) -> None:
    report.clean_rows = int(row[f"fate:{C.CLEAN}"])
    report.invalid = int(row[f"fate:{C.INVALID}"])
    report.superseded = int(row[f"fate:{C.SUPERSEDED}"])
    report.conflicts = int(row[f"fate:{C.CONFLICT}"])
    report.duplicates_removed = int(row[f"fate:{C.DUPLICATE}"])
    report.quarantined = report.invalid + report.superseded + report.conflicts
    report.rule_counts = {r: int(row[f"rule:{r}"]) for r in all_rule_names(spec) if row[f"rule:{r}"]}
    report.fill_values = fill_values_from(row, fill_spec)


def set_key_rule_counts(report: IngestReport) -> None:
    for rule, count in ((C.SUPERSEDED_RULE, report.superseded), (C.CONFLICT_RULE, report.conflicts)):
        if count:
            report.rule_counts[rule] = count
        else:
            report.rule_counts.pop(rule, None)


def check_counts(report: IngestReport) -> None:
    """Records read (observed as read, before any join) = clean + quarantined + duplicates, exactly."""
    fated = report.clean_rows + report.quarantined + report.duplicates_removed
    if fated != report.rows_read:
        raise IngestError(
            f"accounting mismatch: {report.rows_read} records read, but clean {report.clean_rows} + quarantined "
            f"{report.quarantined} + duplicates {report.duplicates_removed} = {fated} (a join multiplied or "
            "dropped rows?); nothing was written")


def count_losers(report: IngestReport, losers: DataFrame) -> None:
    """Clean rows that lost against the table's row of their key move from clean to the quarantine."""
    lost = {r[0]: int(r[1]) for r in losers.groupBy(C.FATE).count().collect()}
    moved = sum(lost.values())
    report.clean_rows -= moved
    report.superseded += lost.get(C.SUPERSEDED, 0)
    report.conflicts += lost.get(C.CONFLICT, 0)
    report.quarantined += moved
    set_key_rule_counts(report)
