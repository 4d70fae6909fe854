"""docker-compose.yml, docker/Dockerfile and flink-conf/: no Docker engine runs here, so the compose
file is validated with `docker-compose config -q` (Debian package docker-compose, or the
`docker compose` plugin) and checked to run what tests/test_cluster.py runs on a real standalone
cluster: the same Flink scripts, submission script, cluster config and job config."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.config import load_config
from feature_store_fixtures import service_missing
from flink_cluster import FLINK_HOME, REPO, SUBMIT

COMPOSE = REPO / "docker-compose.yml"


def compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]     # safe_load resolves the << anchors


def test_compose_file_is_valid():
    cli = compose_cli()
    if cli is None:
        service_missing("neither docker-compose nor `docker compose` is installed (make services)")
    done = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_runs_the_cluster_tests_commands(services):
    project = {name for name, s in services.items() if s.get("build", {}).get("dockerfile") == "docker/Dockerfile"}
    assert project == {"demo-data", "plasma", "jobmanager", "taskmanager", "submit", "producer"}
    # JobManager and TaskManager: the scripts start-cluster.sh runs (as daemons) in test_cluster.py
    assert services["jobmanager"]["command"][:2] == ["jobmanager.sh", "start-foreground"]
    assert services["taskmanager"]["command"][:2] == ["taskmanager.sh", "start-foreground"]
    bin_dir = FLINK_HOME / "bin"
    assert '"${FLINK_BIN_DIR}"/jobmanager.sh' in (bin_dir / "start-cluster.sh").read_text()
    assert "taskmanager.sh" in (bin_dir / "config.sh").read_text()
    # the submission: the very script test_cluster.py's StandaloneCluster.submit runs
    submit = services["submit"]["command"]
    assert REPO / submit[0] == SUBMIT
    job = load_config(REPO / submit[1])
    # the cluster configuration: flink-conf/ mounted where the image's FLINK_CONF_DIR links it
    for name in project:
        assert "./flink-conf:/opt/streamscore/flink-conf:ro" in services[name]["volumes"]
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "ln -s /opt/streamscore/flink-conf/config.yaml /opt/flink/conf/config.yaml" in dockerfile
    assert "FLINK_CONF_DIR=/opt/flink/conf" in dockerfile
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), f"Dockerfile copies a missing {source}"
    # the job reaches the services by their compose names and volumes
    assert job.kafka.bootstrap_servers == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert job.features.store.startswith("plasma:///run/streamscore/")
    assert "plasma:/run/streamscore" in services["taskmanager"]["volumes"]
    assert services["taskmanager"]["ipc"] == "service:plasma"
    assert job.model.path.startswith("/data/demo/") and services["demo-data"]["command"][-1] == "/data/demo"
    assert job.flink.checkpoint_dir.startswith("file:///data/") and job.sink.path.startswith("file:///data/")
    topics = services["topics"]["command"][0]
    for topic in (job.kafka.input_topic, job.kafka.output_topic, job.kafka.dead_letter_topic):
        assert f"{topic}:" in topics


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_image_installs_every_package_of_the_project():
    """The Dockerfile copies every top-level package pyproject.toml installs before ``pip install .``
    (the image once lacked ``registry/``: ``model.registry`` and ``streamscore registry`` failed in it)."""
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages == {p.name for p in REPO.iterdir() if (p / "__init__.py").exists() and p.name != "tests"} - {"bench"}
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    install = dockerfile.index("pip install --no-cache-dir .")
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile[:install], re.MULTILINE))
    assert packages <= copied, f"not copied into the image before pip install: {sorted(packages - copied)}"


def test_flink_conf_has_what_the_job_needs():
    conf = flatten(yaml.safe_load((REPO / "flink-conf" / "config.yaml").read_text()))
    assert conf["python.execution-mode"] == "process"            # the async I/O operator needs it
    for key in ("python.executable", "python.fn-execution.bundle.size", "python.fn-execution.bundle.time",
                "execution.checkpointing.interval", "execution.checkpointing.dir", "state.backend.type",
                "execution.checkpointing.externalized-checkpoint-retention"):
        assert key in conf, key
    assert conf["metrics.reporter.prom.factory.class"] == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    assert list((FLINK_HOME / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar")), \
        "the Prometheus reporter plugin is not in the apache-flink wheel"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "flink-conf").glob("job*.yaml")))
def test_shipped_job_configs_load(name):
    cfg = load_config(REPO / "flink-conf" / name)
    assert cfg.sink.kind in ("kafka", "files", "both")
