"""A small client for Flink's REST API (a MiniCluster's, found by ``JobProcess.rest()``, or a
cluster's JobManager): job status, restarts, and operator metrics."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable
from urllib.parse import quote


class FlinkRest:
    """``FlinkRest("http://127.0.0.1:8081")``."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read() or b"{}")

    def stop_with_savepoint(self, job_id: str, target_directory: str | None = None,
                            timeout_s: float = 300.0) -> str:
        """Stop the job with a savepoint (``POST /jobs/:id/stop``, sources not drained) and return
        the savepoint's path once Flink reports it complete; raise with Flink's cause if it fails.
        ``target_directory``: None for the cluster's ``execution.checkpointing.savepoint-dir``."""
        body: dict[str, Any] = {"drain": False}
        if target_directory:
            body["targetDirectory"] = target_directory
        trigger = self.post(f"/jobs/{job_id}/stop", body)["request-id"]
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.get(f"/jobs/{job_id}/savepoints/{trigger}")
            if answer.get("status", {}).get("id") == "COMPLETED":
                operation = answer.get("operation", {})
                if "location" in operation:
                    return operation["location"]
                cause = operation.get("failure-cause", {})
                raise RuntimeError(f"stop-with-savepoint of {job_id} failed: "
                                   f"{cause.get('class', '')}: {cause.get('stack-trace', cause)}"[:3000])
            if time.monotonic() > deadline:
                raise TimeoutError(f"stop-with-savepoint of {job_id} not complete within {timeout_s}s: {answer}")
            time.sleep(0.5)

    def is_up(self) -> bool:
        try:
            self.get("/overview")
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def job_state(self, job_id: str) -> str:
        return self.get(f"/jobs/{job_id}")["state"]

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

    def vertex_metrics(self, job_id: str, select: Callable[[str], bool] | None = None,
                       chunk: int = 20, agg: str = "sum") -> dict[str, dict[str, float]]:
        """Metrics of every operator chain (vertex name → metric id → value, aggregated over its
        subtasks by ``agg``: sum, max, min or avg). ``select``: keep only the metric ids it
        accepts (all when None)."""
        out: dict[str, dict[str, float]] = {}
        for vertex in self.get(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            ids = [m["id"] for m in self.get(base) if select is None or select(m["id"])]
            values: dict[str, float] = {}
            for i in range(0, len(ids), chunk):     # long ?get= lists are refused
                wanted = ",".join(quote(m, safe="") for m in ids[i:i + chunk])
                for v in self.get(f"{base}?get={wanted}&agg={agg}"):
                    if agg in v:
                        values[v["id"]] = float(v[agg])
            out[vertex["name"]] = values
        return out

    def operator_totals(self, pattern: "re.Pattern[str]", job_id: str | None = None) -> dict[str, float]:
        """Operator metrics whose id matches ``pattern`` (its group 1 names the total), summed over
        vertices and subtasks, of ``job_id`` or else the one running job; {} when none runs."""
        if job_id is None:
            running = self.running_jobs()
            if not running:
                return {}
            job_id = running[0]["jid"]
        totals: dict[str, float] = {}
        for metrics in self.vertex_metrics(job_id, lambda m: bool(pattern.search(m))).values():
            for metric_id, value in metrics.items():
                name = pattern.search(metric_id).group(1)
                totals[name] = totals.get(name, 0.0) + value
        return dict(sorted(totals.items()))
