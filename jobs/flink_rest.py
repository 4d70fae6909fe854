"""A small client for Flink's REST API (the MiniCluster's, when ``rest.port`` is set, or a
cluster's JobManager): job status, restarts, and operator metrics."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class FlinkRest:
    """``FlinkRest("http://127.0.0.1:8081")``."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def is_up(self) -> bool:
        try:
            self.get("/overview")
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def running_jobs(self) -> list[dict]:
        """Jobs whose state is RUNNING or RESTARTING (id, name, state)."""
        jobs = self.get("/jobs/overview")["jobs"]
        return [j for j in jobs if j["state"] in ("RUNNING", "RESTARTING", "CREATED", "INITIALIZING")]

    def restarts(self, job_id: str) -> int:
        """How often the job failed over (Flink's ``numRestarts`` job metric)."""
        values = self.get(f"/jobs/{job_id}/metrics?get=numRestarts")
        return int(float(values[0]["value"])) if values else 0

    def exceptions(self, job_id: str) -> list[str]:
        """The root causes in the job's exception history (newest first)."""
        history = self.get(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
        return [e.get("exceptionName", "") + ": " + (e.get("stacktrace") or "").split("\n")[0] for e in history]

    def vertex_metrics(self, job_id: str, names: list[str] | None = None) -> dict[str, dict[str, float]]:
        """Metrics of every operator chain (vertex name → metric → value, summed over subtasks).
        ``names``: only these metric ids (e.g. ``0.score:model.predictions``); all when None."""
        out: dict[str, dict[str, float]] = {}
        for vertex in self.get(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            wanted = names if names is not None else [m["id"] for m in self.get(base)]
            values = self.get(f"{base}?get={','.join(wanted)}&agg=sum") if wanted else []
            out[vertex["name"]] = {v["id"]: float(v["sum"]) for v in values if "sum" in v}
        return out
