#!/usr/bin/env bash
# Creates the separate Airflow virtualenv (.venv-airflow) from requirements-airflow.txt, the exact
# lock that stands in for Airflow's published constraints (unreachable from here; see its header).
#
# Idempotent: a stamp in the venv holds the lock's sha256, so a second call returns at once. A
# changed lock rebuilds the venv from scratch (pip never removes packages a lock dropped); a venv
# without a stamp (a half-finished or hand-made install) is completed in place. Concurrent callers
# (two test runs) wait for each other on a lock file instead of installing twice.
#
# Usage: scripts/airflow_env.sh [VENV_DIR]     (default: $AIRFLOW_VENV or <repo>/.venv-airflow)
#        PYTHON=/path/to/python3.11 scripts/airflow_env.sh   to choose the interpreter
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-${AIRFLOW_VENV:-$repo/.venv-airflow}}
requirements=$repo/requirements-airflow.txt
stamp=$venv/.installed
want=$(sha256sum "$requirements" | cut -d' ' -f1)

installed() { [ -x "$venv/bin/airflow" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; }

installed && exit 0
mkdir -p "$(dirname "$venv")"
# The lock lives outside the venv (which a rebuild deletes) and outside the checkout.
exec 9>"${TMPDIR:-/tmp}/airflow-env-$(echo "$venv" | sha256sum | cut -c1-16).lock"
flock 9
installed && exit 0          # another caller finished while we waited

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "airflow_env.sh: $requirements is a lock for Python 3.11; $python is $version (set PYTHON=...)" >&2
  exit 2
fi
if [ -e "$stamp" ]; then
  echo "requirements-airflow.txt changed: rebuilding $venv"
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "installing Airflow into $venv (about a minute)..."
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv -r "$requirements"
"$venv/bin/python" -m pip check --disable-pip-version-check
# Smoke check in a throw-away AIRFLOW_HOME: importing airflow writes an airflow.cfg into it.
check_home=$(mktemp -d)
trap 'rm -rf "$check_home"' EXIT
got=$(AIRFLOW_HOME=$check_home AIRFLOW__METRICS__TIMER_UNIT_CONSISTENCY=True "$venv/bin/airflow" version)
echo "$want" >"$stamp"
echo "airflow $got ready in $venv"
