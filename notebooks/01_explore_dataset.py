# Databricks notebook source
# MAGIC %md
# MAGIC # Explore a dataset and its data-quality report
# MAGIC
# MAGIC What the ingest kept and what it quarantined (by rule), how evenly the hash shards are filled,
# MAGIC and how the features and the label are distributed in the clean table.
# MAGIC
# MAGIC **Parameters** (widgets on Databricks; elsewhere the defaults, or `SHARDLAKE_NB_<NAME>`):
# MAGIC * `conf`: configuration files (default: the checkout's `conf/base.yaml`)
# MAGIC * `overrides`: `key=value` overrides separated by spaces, e.g. `lake.root=/dbfs/shardlake dataset=flights`
# MAGIC * `sample_rows`: clean rows drawn for the distribution plots

# COMMAND ----------

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from shardlake import delta_io
from shardlake import notebook as nb
from shardlake.lake import Lake

# COMMAND ----------

config = nb.load_config()
sample_rows = int(nb.param("sample_rows", "20000", "rows sampled for distributions"))
spark = nb.spark_session(config)
lake = Lake.at(config.lake.root)
spec = config.dataset
tables = {name: lake.table(spec.name, name) for name in ("clean", "quarantine", "ingest_runs")}
missing = [path for path in tables.values() if not delta_io.table_exists(spark, path)]
if missing:
    raise RuntimeError(f"no Delta table at {missing}: run the ingest first (shardlake-ingest or the Airflow DAG)")
clean = delta_io.read_version(spark, tables["clean"])
quarantine = delta_io.read_version(spark, tables["quarantine"])
print(f"dataset {spec.name} in {lake.root}: clean table v{delta_io.latest_version(spark, tables['clean'])}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Where the rows of the latest ingest went
# MAGIC Every source row is clean, quarantined (it broke a rule, or a newer row of its key superseded it)
# MAGIC or an exact duplicate; the ingest checks that these add up to the rows read.

# COMMAND ----------

runs = delta_io.read_version(spark, tables["ingest_runs"]).toPandas()  # one row per ingest run: small
latest = runs.sort_values(["table_version", "run_id"]).iloc[-1]
fates = {"clean": latest["clean_rows"], "quarantined": latest["quarantined"],
         "exact duplicates": latest["duplicates_removed"]}
fig, ax = plt.subplots(figsize=(8, 2.8))
bars = ax.barh(list(fates), list(fates.values()), color=["tab:green", "tab:red", "tab:gray"])
ax.bar_label(bars, padding=3)
ax.invert_yaxis()
ax.set(xlabel="rows", title=f"ingest {latest['run_id']}: {latest['rows_read']} rows read "
                            f"-> clean table v{latest['table_version']}")
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Quarantine by rule
# MAGIC A row can break several rules at once, so the bars can add up to more than the quarantined rows.

# COMMAND ----------

by_rule = (quarantine.select(F.explode("rules").alias("rule")).groupBy("rule").count()
           .orderBy(F.desc("count")).toPandas())
fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(by_rule), 3) + 1))
if by_rule.empty:
    ax.text(0.5, 0.5, "nothing quarantined", ha="center", va="center", transform=ax.transAxes)
else:
    bars = ax.barh(by_rule["rule"], by_rule["count"], color="tab:red")
    ax.bar_label(bars, padding=3)
    ax.invert_yaxis()
ax.set(xlabel="quarantined rows", title=f"{quarantine.count()} quarantined rows of {spec.name}, by broken rule")
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Shard skew
# MAGIC Rows per hash shard and split. The shard is `pmod(xxhash64(key), shards)`: a skew (max/mean)
# MAGIC above `skew_warn_ratio` means a few keys hold many rows, and one shard's tasks will lag.

# COMMAND ----------

per_shard = clean.groupBy("shard", "split").count().toPandas().pivot(index="shard", columns="split", values="count")
per_shard = per_shard.reindex(range(spec.shards)).fillna(0)
totals = per_shard.sum(axis=1)
skew = totals.max() / totals.mean() if totals.mean() else float("nan")
fig, ax = plt.subplots(figsize=(8, 3.5))
bottom = None
for split in [s for s in ("train", "validation", "test") if s in per_shard]:
    ax.bar(per_shard.index, per_shard[split], bottom=bottom, label=split)
    bottom = per_shard[split] if bottom is None else bottom + per_shard[split]
ax.axhline(totals.mean(), color="black", linestyle="--", linewidth=1, label="mean")
ax.axhline(totals.mean() * spec.skew_warn_ratio, color="tab:red", linestyle=":", linewidth=1,
           label=f"warn ({spec.skew_warn_ratio} x mean)")
ax.set(xlabel="shard", ylabel="rows", xticks=list(per_shard.index),
       title=f"rows per shard: skew {skew:.3f} (max/mean)" + ("  SKEWED" if skew > spec.skew_warn_ratio else ""))
ax.legend(loc="lower right", fontsize=8)
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Feature distributions, by label
# MAGIC A sample of clean rows; numeric features as histograms per label value, categorical features as
# MAGIC their most frequent values with the label rate of each.

# COMMAND ----------

label = spec.label.column
total_rows = clean.count()
fraction = min(1.0, sample_rows / total_rows) if total_rows else 1.0
features = list(spec.features.numeric) + list(spec.features.categorical)
sample = clean.sample(fraction=fraction, seed=7).select(*features, label, "split").toPandas()
numeric = list(spec.features.numeric)
cols = 4
rows = -(-len(numeric) // cols)
fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
for ax, column in zip(axes.flat, numeric):
    for value, group in sample.groupby(label):
        ax.hist(group[column].dropna(), bins=30, alpha=0.55, density=True, label=f"{label}={value}")
    ax.set_title(column, fontsize=10)
for ax in list(axes.flat)[len(numeric):]:
    ax.axis("off")
axes.flat[0].legend(fontsize=8)
fig.suptitle(f"numeric features ({len(sample)} sampled clean rows)")
fig.tight_layout()
nb.show(fig)

# COMMAND ----------

categorical = list(spec.features.categorical)
fig, axes = plt.subplots(1, len(categorical), figsize=(5 * len(categorical), 4), squeeze=False)
for ax, column in zip(axes.flat, categorical):
    stats = sample.groupby(column)[label].agg(["count", "mean"]).sort_values("count", ascending=False).head(15)
    ax.bar(stats.index.astype(str), stats["count"], color="tab:blue")
    ax.set_ylabel("rows")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    rate = ax.twinx()
    rate.plot(stats.index.astype(str), stats["mean"], color="tab:orange", marker="o")
    rate.set_ylim(0, 1)
    rate.set_ylabel(f"{label} rate", color="tab:orange")
    ax.set_title(f"{column}: top {len(stats)} values")
fig.tight_layout()
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The label per split
# MAGIC The split is a salted hash of the key: the label rate should be about the same in every split.

# COMMAND ----------

per_split = clean.groupBy("split").agg(F.count(F.lit(1)).alias("rows"), F.avg(label).alias("rate")).toPandas()
per_split = per_split.set_index("split").reindex([s for s in ("train", "validation", "test") if s in set(per_split["split"])])
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
left.bar(per_split.index, per_split["rows"], color="tab:blue")
left.set(title="rows per split", ylabel="rows")
right.bar(per_split.index, per_split["rate"], color="tab:orange")
right.set(title=f"{label} rate per split", ylim=(0, 1))
fig.tight_layout()
nb.show(fig)
print(json.dumps({"clean_rows": int(total_rows), "quarantined": int(quarantine.count()), "shard_skew": round(float(skew), 4)}))
