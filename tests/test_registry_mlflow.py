"""Registering from an MLflow model registry by ``models:/`` URI, against a real MLflow server
(full mlflow in .venv-mlflow; our venv has the mlflow-skinny client)."""
from __future__ import annotations

import hashlib

import pytest

from mlflow_server import MlflowServer, mlflow_binary
from registry_fixtures import MODELS, reg, registry_uri_for_test  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]   # the server start is slow under load


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not mlflow_binary().exists():
        from feature_store_fixtures import service_missing
        service_missing(f"no MLflow server at {mlflow_binary()}: run `make mlflow-deps` (side venv .venv-mlflow)")
    pytest.importorskip("mlflow", reason="the MLflow client (mlflow-skinny) is not installed: pip install '.[test]'")
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def logged_model(mlflow_server):
    """logreg.onnx logged as a run artifact and registered in MLflow as fraud-mlflow v1 (alias champion)
    and skops as v2 (alias challenger)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_server.url)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    client.create_registered_model("fraud-mlflow")
    for file, alias in (("logreg.onnx", "champion"), ("forest.skops", "challenger")):
        with mlflow.start_run() as run:
            mlflow.log_metric("auc", 0.9)
            mlflow.log_artifact(str(MODELS / file), artifact_path="model")
        mv = client.create_model_version("fraud-mlflow", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        client.set_registered_model_alias("fraud-mlflow", alias, mv.version)
    return mlflow_server


def test_register_by_models_uri_alias_and_version(logged_model, reg, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_model.url)
    mv = reg.register_model("fraud", "models:/fraud-mlflow@champion", actor="ana", reason="from MLflow")
    assert mv.uri == "models:/fraud-mlflow/1"                   # the alias is pinned to the version it named
    assert mv.sha256 == hashlib.sha256((MODELS / "logreg.onnx").read_bytes()).hexdigest() and mv.format == "onnx"
    assert mv.metadata["mlflow_alias"] == "champion" and mv.metadata["mlflow_run_id"]
    mv2 = reg.register_model("fraud", "models:/fraud-mlflow/2", actor="ana", reason="skops from MLflow")
    assert (mv2.version, mv2.format, mv2.filename) == (2, "sklearn", "forest.skops")
    # another host (empty cache) fetches through MLflow again, sha256-checked
    path = reg.fetch_model(mv, cache_dir=tmp_path / "other-host")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mv.sha256
    from registry import ArtifactError
    with pytest.raises(ArtifactError, match="MLflow could not resolve"):
        reg.register_model("fraud", "models:/fraud-mlflow@nosuchalias", actor="ana", reason="typo")
