# Databricks notebook source
# MAGIC %md
# MAGIC # Inspect predictions and the reduce-stage summary
# MAGIC
# MAGIC The map stage scored every clean row with one model and MERGEd the predictions into Delta; the
# MAGIC reduce stage summarised them per shard, split and cohort, and compared the rows new to the model
# MAGIC with the model card's test metrics (drift). This notebook draws both.
# MAGIC
# MAGIC **Parameters** (widgets on Databricks; elsewhere the defaults, or `SHARDLAKE_NB_<NAME>`):
# MAGIC * `conf`, `overrides`: the configuration, as for the jobs
# MAGIC * `model_version`: the model whose predictions to inspect (default: the dataset's production model)

# COMMAND ----------

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pyspark.sql import functions as F

from shardlake import delta_io, registry
from shardlake import notebook as nb
from shardlake.lake import Lake

# COMMAND ----------

config = nb.load_config()
model_version = nb.param("model_version", "", "model version (empty: production)")
spark = nb.spark_session(config)
lake = Lake.at(config.lake.root)
spec = config.dataset
card = (registry.model_card(spark, lake.registry(), model_version) if model_version
        else registry.production_model(spark, lake.registry(), spec.name))
if card is None:
    raise RuntimeError(f"no model {model_version or 'in production'} for {spec.name!r} in {lake.registry()}")
model_version = card["model_version"]
predictions_path = lake.table(spec.name, "predictions")
summary_path = lake.table(spec.name, "inference_summary")
for path in (predictions_path, summary_path):
    if not delta_io.table_exists(spark, path):
        raise RuntimeError(f"no Delta table at {path}: run the inference first (shardlake-infer or the Airflow DAG)")
predictions = delta_io.read_version(spark, predictions_path).where(F.col("model_version") == model_version)
label = spec.label.column if spec.label.column in predictions.columns else None
print(f"model {model_version}: {predictions.count()} predictions in {predictions_path}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Scores
# MAGIC The distribution of scores per true label (they should separate), and calibration: the observed
# MAGIC label rate of rows grouped by score, against the diagonal of a perfectly calibrated model.

# COMMAND ----------

bins = 20
low, high = predictions.agg(F.min("score"), F.max("score")).first()
width = max(high - low, 1e-6) / bins  # bins over the observed range: a young model's scores are narrow
bucket = F.least(F.floor((F.col("score") - low) / width), F.lit(bins - 1)).cast("int").alias("bucket")
group = [bucket, F.col(label).alias("label")] if label else [bucket]
histogram = predictions.groupBy(*group).agg(F.count(F.lit(1)).alias("rows")).toPandas()
centers = low + (np.arange(bins) + 0.5) * width
fig, (dist_ax, calib_ax) = plt.subplots(1, 2, figsize=(12, 4))
for value, part in (histogram.groupby("label") if label else [("all", histogram)]):
    counts = np.zeros(bins)
    counts[part["bucket"].to_numpy()] = part["rows"].to_numpy()
    dist_ax.bar(centers, counts / max(counts.sum(), 1), width=width, alpha=0.55,
                label=f"{label}={value}" if label else "all rows")
dist_ax.set(xlabel="score", ylabel="share of rows", title="score distribution")
dist_ax.legend()
if label:
    per_bucket = histogram.pivot_table(index="bucket", columns="label", values="rows", fill_value=0)
    positives = per_bucket.get(1, 0)
    observed = positives / per_bucket.sum(axis=1)
    calib_ax.plot(centers[per_bucket.index], observed, marker="o", label="model")
    calib_ax.plot([low, high], [low, high], color="gray", linestyle="--", label="perfectly calibrated")
    calib_ax.set(xlabel="score", ylabel=f"observed {label} rate", title="calibration (score bins)")
    calib_ax.legend()
else:
    calib_ax.text(0.5, 0.5, "no label: no calibration", ha="center", va="center", transform=calib_ax.transAxes)
fig.tight_layout()
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The reduce-stage summary
# MAGIC One row per shard and one overall row, per (model, source table version, logical date). The
# MAGIC shards should agree with each other; a shard far from the overall figure is worth a look.

# COMMAND ----------

summary = (delta_io.read_version(spark, summary_path).where(F.col("model_version") == model_version).toPandas())
latest = summary.sort_values(["source_version", "logical_date"]).iloc[-1]
run = summary[(summary["source_version"] == latest["source_version"]) & (summary["logical_date"] == latest["logical_date"])]
overall = run[run["scope"] == "overall"].iloc[0]
shards = run[run["scope"].str.startswith("shard=")].sort_values(
    "scope", key=lambda s: s.str.split("=").str[-1].astype(int))
preferred = ["rows", "mean_score", "predicted_positive_rate", "label_rate", "accuracy", "precision", "recall", "auc",
             "rmse", "mae"]
metrics = [m for m in preferred if m in run and run[m].notna().any()]
cols = 4
fig, axes = plt.subplots(-(-len(metrics) // cols), cols, figsize=(4 * cols, 3 * -(-len(metrics) // cols)), squeeze=False)
for ax, name in zip(axes.flat, metrics):
    ax.bar(shards["scope"].str.replace("shard=", ""), shards[name], color="tab:blue")
    if name != "rows":
        ax.axhline(overall[name], color="black", linestyle="--", linewidth=1, label="overall")
    ax.set(title=name, xlabel="shard")
for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
axes.flat[min(1, len(metrics) - 1)].legend(fontsize=8)
fig.suptitle(f"reduce stage per shard: {model_version} on clean v{latest['source_version']}, "
             f"logical date {latest['logical_date']}")
fig.tight_layout()
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Drift: the rows new to the model against the model card's test metrics
# MAGIC Like for like: only rows the model's training version did not hold as they are now are
# MAGIC compared with its test metrics, and only a figure worse by more than the allowed change
# MAGIC (`infer.drift_tolerance`, or `infer.drift_z` standard errors at that row count) is drift.
# MAGIC Only what drifted is drawn. On the training version itself, the test split must reproduce the
# MAGIC card (the sanity check); a failure is shown too, and so is any feature or score whose
# MAGIC distribution moved (PSI above `infer.psi_threshold`, or KS beyond its critical value).

# COMMAND ----------

checks = json.loads(overall.get("drift_json") or "{}")
drifted = {m: c for m, c in checks.get("new_rows", {}).items() if c["drifted"]}
insane = {m: c for m, c in checks.get("sanity", {}).items() if c["failed"]}
shown = {**{f"{m} (new rows)": c for m, c in drifted.items()}, **{f"{m} (sanity)": c for m, c in insane.items()}}
moved = {m: c for m, c in checks.get("distributions", {}).items() if c["drifted"]}
if moved:  # label-free: distributions of the rows new to the model against the training split
    print("distributions drifted:", {m: round(c["psi"], 3) for m, c in moved.items()})
fig, ax = plt.subplots(figsize=(8, 3.5))
if shown:
    x = np.arange(len(shown))
    ax.bar(x - 0.2, [c["at_test"] for c in shown.values()], width=0.4, label="test split (model card)")
    ax.bar(x + 0.2, [c["now"] for c in shown.values()], width=0.4, label="this inference", color="tab:red")
    ax.set_xticks(x, list(shown))
    ax.legend(fontsize=8)
    ax.set(title=f"drifted or failed: {sorted(shown)}")
else:
    rows = next(iter(checks.get("new_rows", {}).values()), {}).get("rows", 0)
    ax.text(0.5, 0.5, f"no drift ({rows} labelled rows new to the model)" if "new_rows" in checks
            else "no rows new to the model in this version: drift not judged", ha="center", va="center",
            transform=ax.transAxes)
    ax.axis("off")
fig.tight_layout()
nb.show(fig)
