# Databricks notebook source
# MAGIC %md
# MAGIC # Train and compare runs
# MAGIC
# MAGIC Optionally trains one more run (the configuration plus `train_overrides`, e.g. another learning
# MAGIC rate), then compares every model registered for the dataset: training curves, validation
# MAGIC metric against the promotion threshold, and test metrics.
# MAGIC
# MAGIC **Parameters** (widgets on Databricks; elsewhere the defaults, or `SHARDLAKE_NB_<NAME>`):
# MAGIC * `conf`, `overrides`: the configuration, as for the jobs
# MAGIC * `train_overrides`: `key=value` overrides for a new run, e.g. `train.learning_rate=0.01 train.epochs=3`;
# MAGIC   empty (the default) trains nothing and only compares
# MAGIC * `max_runs`: how many of the latest registered runs to compare

# COMMAND ----------

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator
from pyspark.sql import functions as F

from shardlake import delta_io
from shardlake import notebook as nb
from shardlake.lake import Lake
from shardlake.training.metrics import primary_metric

# COMMAND ----------

base_overrides = nb.param_list("overrides", "", "key=value overrides")
train_overrides = nb.param_list("train_overrides", "", "overrides of a new training run (empty: none)")
max_runs = int(nb.param("max_runs", "8", "runs compared"))
config = nb.load_config()
spark = nb.spark_session(config)
lake = Lake.at(config.lake.root)
dataset = config.dataset.name
metric, higher_is_better = primary_metric(config.dataset.label.kind)

# COMMAND ----------

# MAGIC %md
# MAGIC ## A new run (only with `train_overrides`)
# MAGIC The same stage the train job runs: one exact version of the clean table, Petastorm readers,
# MAGIC Horovod on Spark. The run is registered as a candidate; promotion stays the gate's decision.

# COMMAND ----------

new_run = None
if train_overrides:
    from jobs.versioning import code_version
    from shardlake.stages import train

    run_config = nb.load_config(overrides=[*base_overrides, *train_overrides])
    _, card = train.fit(spark, lake, run_config, code_version(), log=print)
    new_run = card["model_version"]
    print(json.dumps(train.summary(card), default=str))
else:
    print("train_overrides is empty: comparing the registered runs only")

# COMMAND ----------

registry_path = lake.registry()
if not delta_io.table_exists(spark, registry_path):
    raise RuntimeError(f"no model registry at {registry_path}: train a model first (shardlake-train or the Airflow DAG)")
rows = (delta_io.read_version(spark, registry_path).where(F.col("dataset") == dataset)
        .select("model_version", "stage", "validation_metric", "card_json").toPandas())
cards = [json.loads(text) for text in rows["card_json"]]
stages = dict(zip(rows["model_version"], rows["stage"]))
cards = sorted(cards, key=lambda c: (c["table_version"], c["model_version"]))[-max_runs:]
if not cards:
    raise RuntimeError(f"no model of {dataset!r} in {registry_path}")


def label_of(card: dict) -> str:
    """Legend label: the version's hash part, its stage, and what differs in its training settings."""
    train_settings = card["config"]["train"]
    return (f"{card['model_version'].rsplit('-', 1)[-1]} [{stages.get(card['model_version'], '?')}] "
            f"lr={train_settings['learning_rate']} epochs={train_settings['epochs']}")


print(f"{len(cards)} run(s) of {dataset}; new run: {new_run}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Training curves
# MAGIC Train loss and the validation metric per epoch, one line per run (a resumed run continues its curve).

# COMMAND ----------

fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(12, 4))
for card in cards:
    epochs = [h["epoch"] + 1 for h in card["history"]]
    loss_ax.plot(epochs, [h["train_loss"] for h in card["history"]], marker="o", label=label_of(card))
    metric_ax.plot(epochs, [h["validation"].get(metric, float("nan")) for h in card["history"]], marker="o",
                   label=label_of(card))
loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
metric_ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric}")
metric_ax.axhline(config.train.promote_threshold, color="tab:red", linestyle=":", label="promotion threshold")
for ax in (loss_ax, metric_ax):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
metric_ax.legend(fontsize=7, loc="best")
fig.tight_layout()
nb.show(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Held-out metric against the promotion threshold, and test metrics
# MAGIC The gate (`jobs/promote.py`) scores a candidate and the production model on the same held-out
# MAGIC test rows and promotes the candidate only if it is at least as good by `train.promote_margin`
# MAGIC and reaches `train.promote_threshold`. The validation metric, which picked the best epoch, is
# MAGIC not used for that. Both figures of the last gate are kept on the candidate's registry row.

# COMMAND ----------

names = [card["model_version"].rsplit("-", 1)[-1] for card in cards]
colors = {"production": "tab:green", "candidate": "tab:blue", "archived": "tab:gray"}
test = pd.DataFrame([card["test_metrics"] for card in cards], index=names)
shown = [m for m in ("accuracy", "precision", "recall", "auc", "rmse", "mae") if m in test]
fig, (gate_ax, test_ax) = plt.subplots(1, 2, figsize=(12, 4))
gate_ax.bar(names, [card["test_metrics"].get(metric, float("nan")) for card in cards],
            color=[colors.get(stages.get(card["model_version"]), "tab:blue") for card in cards])
gate_ax.axhline(config.train.promote_threshold, color="tab:red", linestyle=":", label="promotion threshold")
gate_ax.set(ylabel=f"test {metric}", title="held-out metric (green: production)")
gate_ax.legend(fontsize=8)
test[shown].plot.bar(ax=test_ax, rot=0)
test_ax.set(ylabel="test metric", title="test metrics per run")
for ax in (gate_ax, test_ax):
    ax.tick_params(axis="x", labelsize=8)
fig.tight_layout()
nb.show(fig)
