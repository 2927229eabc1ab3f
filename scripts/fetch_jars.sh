#!/usr/bin/env bash
# Copies the Delta jars for Spark 3.5 from Maven Central into a cache folder once, so that no
# Spark session resolves packages at start-up. Usage: scripts/fetch_jars.sh CACHE_DIR
set -euo pipefail
dest=${1:?jar cache folder}
delta_version=3.3.3
mkdir -p "$dest"
for artifact in "delta-spark_2.12" "delta-storage"; do
  jar="$dest/$artifact-$delta_version.jar"
  [ -s "$jar" ] && continue
  mvn -q -B dependency:copy -Dartifact="io.delta:$artifact:$delta_version" -DoutputDirectory="$dest"
done
echo "delta jars in $dest"
