#!/bin/sh
# Submit the streamscore scoring job to the Flink cluster that FLINK_CONF_DIR (or the Flink
# distribution's conf/) describes. The docker-compose `submit` service and tests/test_cluster.py
# both run exactly this.
#
#   flink-conf/submit-job.sh JOB_YAML [flink run options, e.g. -s SAVEPOINT_PATH]
#
# FLINK_HOME: the Flink distribution (the official images set it; with `pip install apache-flink`
# it is .../site-packages/pyflink). The project's packages are shipped with --pyFiles; the
# TaskManagers' interpreter (python.executable in config.yaml) must have the dependencies —
# or ship a packed virtualenv: --pyArchives venv.tar.gz#venv and python.executable: venv/bin/python.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 JOB_YAML [flink run options]" >&2; exit 2; }
job_yaml=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
cd "$(dirname "$0")/.."
exec "${FLINK_HOME:+$FLINK_HOME/bin/}flink" run --detached "$@" \
    --python jobs/score_stream.py \
    --pyFiles jobs,operators,connectors,model_formats \
    -- --config "$job_yaml"
