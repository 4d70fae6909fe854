# streamscore — make demo | make test | make bench
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
EVENTS ?= 20000
RATE   ?= 5000
# pytest-xdist workers for make test/test-fast (0 = one process); tests that share a fixed resource
# are kept on one worker with @pytest.mark.xdist_group (--dist loadgroup)
TEST_WORKERS ?= 2
PYTEST  = $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

.PHONY: install demo demo-experiment test test-fast services bench bench-deps clean help

help:
	@echo "make demo [EVENTS=20000 RATE=5000]  run the scoring job end to end on embedded defaults"
	@echo "make demo-experiment                the demo as a live experiment: two routes on a text field, a shadow and a"
	@echo "                                   10 % canary beside the champion on its route, the comparison table, HTML report"
	@echo "make test [TEST_WORKERS=2]          run the test suite (real broker, Plasma, MiniCluster), in 2 processes"
	@echo "make test-tansu                     the Kafka-facing suites against Tansu (make test runs them on Apache Kafka)"
	@echo "make test-hdfs                      the file sink (crash at every call, kill mid-write) on an embedded HDFS"
	@echo "make services                       install (Debian) and start PostgreSQL :5432 and Redis :6379 for the tests"
	@echo "make cluster-test                   production path: standalone Flink cluster (one and two TaskManagers),"
	@echo "                                   rescale from savepoints, file sink, compose file"
	@echo "make chaos [CHAOS_EVENTS=50000]     break the job on purpose (kills, outages): exact accounting table,"
	@echo "                                   at-least-once and exactly-once (the latter on Apache Kafka, via mvn)"
	@echo "make bench                          end-to-end, model-format and side-store benchmarks"
	@echo "make bench-deps                     .venv-bench: Quix Streams and Bytewax for the e2e comparison"
	@echo "make mlflow-deps                    .venv-mlflow: an MLflow server for the registry's models:/ test"

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "streamscore needs Python 3.11 (PyFlink 2.3)"'
	@command -v java >/dev/null || { echo "streamscore needs Java 17 (PyFlink runs Flink in a JVM)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(BIN)/.installed

# PostgreSQL and Redis on loopback for the feature-store tests (root: apt-get, pg_ctlcluster)
services:
	bash .ci/services.sh

demo: install
	$(BIN)/streamscore demo --events $(EVENTS) --rate $(RATE)

demo-experiment: install
	$(BIN)/streamscore demo --experiment --events $(EVENTS) --rate $(RATE)

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

# the suites that talk to Kafka, on Tansu (the demo's zero-download broker) instead of Apache Kafka
KAFKA_SUITES ?= tests/test_apache_kafka.py tests/test_kafka_io.py tests/test_consume.py tests/test_job_integration.py \
	tests/test_job_restart.py tests/test_fuzz_job.py tests/test_exactly_once.py tests/chaos
.PHONY: test-tansu kafka-jars
kafka-jars: install
	$(BIN)/python -m connectors.embedded.maven kafka-broker flink-kafka kafka-records

test-tansu: install
	STREAMSCORE_TEST_BROKER=tansu $(PYTEST) $(KAFKA_SUITES)

.PHONY: test-hdfs
test-hdfs: install
	$(PYTEST) -m hdfs tests/test_file_sink.py tests/test_file_sink_job.py tests/test_embedded_hdfs.py

CHAOS_EVENTS ?= 50000

.PHONY: chaos
chaos: install
	$(BIN)/python tests/chaos/run_chaos.py --events $(CHAOS_EVENTS)

.PHONY: cluster-test
cluster-test: install
	$(BIN)/pytest tests/test_cluster.py tests/test_scaleout.py tests/test_file_sink.py tests/test_file_sink_job.py tests/test_compose.py

# competitor frameworks conflict with the project's pins: their own venv (bench/competitors/)
.venv-bench/.installed: bench/competitors/requirements.txt bench/competitors/setup.sh
	bash bench/competitors/setup.sh $(PYTHON)

bench-deps: .venv-bench/.installed

# a real MLflow server for tests/test_registry_mlflow.py in a venv of its own: full mlflow would resolve in
# the project venv but adds ~30 server packages (Flask, gunicorn, matplotlib, …); ours holds the mlflow-skinny client
.venv-mlflow/.installed:
	$(PYTHON) -m venv .venv-mlflow
	.venv-mlflow/bin/pip install --quiet --upgrade pip
	.venv-mlflow/bin/pip install --quiet "mlflow>=3.1,<4"
	@touch $@

.PHONY: mlflow-deps
mlflow-deps: .venv-mlflow/.installed

bench: install bench-deps
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .venv-bench .venv-mlflow .pytest_cache
