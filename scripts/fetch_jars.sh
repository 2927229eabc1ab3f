#!/usr/bin/env bash
# Copies the jars Spark needs beyond pip's pyspark from Maven Central into a cache folder once, so
# that no Spark session resolves packages at start-up: Delta for Spark 3.5, and the S3A connector
# of pyspark's own Hadoop (hadoop-client-api 3.3.4) with the AWS SDK bundle its POM names
# (libs/shardlake/session.py: S3A_ARTIFACTS; added to a session only for s3a:// lakes and sources),
# Google's GCS connector (added only for gs:// lakes and sources),
# OpenLineage's Spark listener, and, for the tests, Hadoop's HDFS minicluster.
# Usage: scripts/fetch_jars.sh CACHE_DIR
set -euo pipefail
dest=${1:?jar cache folder}
delta_version=3.3.3
mkdir -p "$dest"
fetch() {  # group artifact version [classifier]
  local jar="$dest/$2-$3${4:+-$4}.jar"
  [ -s "$jar" ] && return 0
  mvn -q -B dependency:copy -Dartifact="$1:$2:$3${4:+:jar:$4}" -DoutputDirectory="$dest"
}
for artifact in "delta-spark_2.12" "delta-storage"; do
  fetch io.delta "$artifact" "$delta_version"
done
fetch org.apache.hadoop hadoop-aws 3.3.4
fetch com.amazonaws aws-java-sdk-bundle 1.12.262
# Google's GCS connector for gs:// lakes, shaded (session.py: GCS_CONNECTOR_JAR says why this line).
fetch com.google.cloud.bigdataoss gcs-connector hadoop3-2.2.28 shaded
# OpenLineage's Spark listener (spark.extraListeners): lineage events of every Spark job (issue 14).
fetch io.openlineage openlineage-spark_2.12 1.53.0
# For the tests only: a real HDFS (MiniDFSCluster) on the same Hadoop 3.3.4 (tests/hdfs_server.py).
fetch org.apache.hadoop hadoop-client-minicluster 3.3.4
fetch junit junit 4.13.2
fetch org.hamcrest hamcrest-core 1.3
echo "jars in $dest"
