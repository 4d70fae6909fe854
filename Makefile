# streamscore — make demo | make test | make bench
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
EVENTS ?= 20000
RATE   ?= 5000

.PHONY: install demo test test-fast services bench bench-deps clean help

help:
	@echo "make demo [EVENTS=20000 RATE=5000]  run the scoring job end to end on embedded defaults"
	@echo "make test                           run the test suite (real broker, Plasma, MiniCluster)"
	@echo "make test-kafka                     the Kafka-facing suites against Apache Kafka 4.x (jars fetched once by mvn)"
	@echo "make test-hdfs                      the file sink (crash at every call, kill mid-write) on an embedded HDFS"
	@echo "make services                       install (Debian) and start PostgreSQL :5432 and Redis :6379 for the tests"
	@echo "make cluster-test                   production path: standalone Flink cluster, file sink, compose file"
	@echo "make chaos [CHAOS_EVENTS=50000]     break the job on purpose (kills, outages): exact accounting table"
	@echo "make bench                          end-to-end, model-format and side-store benchmarks"
	@echo "make bench-deps                     .venv-bench: Quix Streams and Bytewax for the e2e comparison"

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

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

# the suites that talk to Kafka, on an embedded Apache Kafka 4.x (single-node KRaft) instead of Tansu
KAFKA_SUITES ?= tests/test_apache_kafka.py tests/test_kafka_io.py tests/test_consume.py tests/test_job_integration.py \
	tests/test_job_restart.py tests/test_fuzz_job.py tests/chaos
.PHONY: test-kafka kafka-jars
kafka-jars: install
	$(BIN)/python -m connectors.embedded.maven kafka-broker

test-kafka: install
	STREAMSCORE_TEST_BROKER=kafka $(BIN)/pytest $(KAFKA_SUITES)

.PHONY: test-hdfs
test-hdfs: install
	$(BIN)/pytest -m hdfs tests/test_file_sink.py tests/test_file_sink_job.py tests/test_embedded_hdfs.py

CHAOS_EVENTS ?= 50000

.PHONY: chaos
chaos: install
	$(BIN)/python tests/chaos/run_chaos.py --events $(CHAOS_EVENTS)

.PHONY: cluster-test
cluster-test: install
	$(BIN)/pytest tests/test_cluster.py tests/test_file_sink.py tests/test_file_sink_job.py tests/test_compose.py

# competitor frameworks conflict with the project's pins: their own venv (bench/competitors/)
.venv-bench/.installed: bench/competitors/requirements.txt bench/competitors/setup.sh
	bash bench/competitors/setup.sh $(PYTHON)

bench-deps: .venv-bench/.installed

bench: install bench-deps
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache
