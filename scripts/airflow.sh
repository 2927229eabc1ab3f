#!/usr/bin/env bash
# The Airflow CLI of .venv-airflow with this project's local defaults, for example:
#   scripts/airflow.sh standalone                                  # scheduler + UI on http://localhost:8080
#   scripts/airflow.sh dags test shardlake_flights 2024-01-02      # one run, in this process
#   scripts/airflow.sh dags list
# Each default below is kept when the variable is already set, so the same script drives tests
# (a temporary AIRFLOW_HOME) and a real deployment (your own settings).
#   AIRFLOW_HOME              <repo>/.cache/airflow: airflow.cfg, the SQLite database, logs,
#                             standalone_admin_password.txt
#   AIRFLOW__CORE__DAGS_FOLDER <repo>/airflow_dags
#   AIRFLOW_CONN_SPARK_LOCAL   the spark_local connection the DAGs use: master local[2]. (JSON: a URI
#                             with [ ] in it silently falls back to master yarn.)
#   SHARDLAKE_HOME            <repo>: where the DAGs find jobs/, conf/ and the project venv (.venv)
#   AIRFLOW__OPENLINEAGE__TRANSPORT  the OpenLineage provider's events as JSON lines in
#                             $AIRFLOW_HOME/lineage/airflow.jsonl (unless OPENLINEAGE_URL or a provider
#                             config names a backend); AIRFLOW__OPENLINEAGE__NAMESPACE: shardlake
# The Airflow venv is created first if missing (scripts/airflow_env.sh), and the metadata database
# is migrated when it does not exist yet. Tasks run from the repo folder, like `make demo`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/airflow_env.sh" >&2
venv=${AIRFLOW_VENV:-$repo/.venv-airflow}

export AIRFLOW_HOME=${AIRFLOW_HOME:-$repo/.cache/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW__CORE__DAGS_FOLDER:-$repo/airflow_dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=${AIRFLOW__CORE__LOAD_EXAMPLES:-False}
# Only silences a deprecation warning printed by every command.
export AIRFLOW__METRICS__TIMER_UNIT_CONSISTENCY=${AIRFLOW__METRICS__TIMER_UNIT_CONSISTENCY:-True}
export AIRFLOW_CONN_SPARK_LOCAL=${AIRFLOW_CONN_SPARK_LOCAL:-'{"conn_type": "spark", "host": "local[2]"}'}
export SHARDLAKE_HOME=${SHARDLAKE_HOME:-$repo}
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export AIRFLOW__OPENLINEAGE__NAMESPACE=${AIRFLOW__OPENLINEAGE__NAMESPACE:-shardlake}
if [ -z "${AIRFLOW__OPENLINEAGE__TRANSPORT:-}${AIRFLOW__OPENLINEAGE__CONFIG_PATH:-}${OPENLINEAGE_URL:-}" ]; then
  mkdir -p "$AIRFLOW_HOME/lineage"
  export AIRFLOW__OPENLINEAGE__TRANSPORT="{\"type\": \"file\", \"log_file_path\": \"$AIRFLOW_HOME/lineage/airflow.jsonl\", \"append\": true}"
fi

# `standalone` and the SequentialExecutor start `airflow ...` subprocesses by name.
export PATH=$venv/bin:$PATH

mkdir -p "$AIRFLOW_HOME"
if [ -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ ! -s "$AIRFLOW_HOME/airflow.db" ] \
   && [ "${1:-}" != "standalone" ] && [ "${1:-}" != "db" ]; then
  "$venv/bin/airflow" db migrate >&2
fi
cd "$repo"
exec "$venv/bin/airflow" "$@"
