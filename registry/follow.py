"""Jobs follow a registry deployment: the model source a scorer serves from, and the thread that
watches the deployment.

:class:`RegistrySource` is a ``model_formats.reloading.ModelSource``: it starts with the
deployment's champion and offers the next champion whenever the deployment's ``revision``
changes (promotion, rollback). A background thread waits for changes (PostgreSQL: LISTEN/NOTIFY
through ``wait_for_change``; SQLite: polling every ``interval_s``), fetches the new artifact into
the per-host cache (sha256 checked by ``fetch_model``) and queues it; the scorer loads, checks
and swaps it between micro-batches (``ReloadingModel``'s one swap path). A version whose artifact
cannot be fetched or verified, or that fails to load or check, is refused: the serving version
stays and the refusal goes to the registry's audit log (``record_refusal``), where ``registry
history`` shows it. While the registry cannot be reached the job keeps serving what it has and
resumes following when it is back.

Deployments that pin a feature snapshot call ``on_features(deployment)`` (see
``registry.materialize``) from the same thread, before the model that needs it is offered.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from model_formats.base import Model
from model_formats.reloading import Candidate, ChallengerOffer, ChallengerPlan

log = logging.getLogger(__name__)


def job_actor() -> str:
    """Who a running job is in the audit log: ``job:<host>:<pid>``."""
    return f"job:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class FollowSpec:
    """What a scorer follows (picklable: Flink ships it to the workers; ``open`` runs there)."""
    registry: str
    name: str
    env: str = "production"
    interval_s: float = 1.0
    cache_dir: str | None = None
    feature_store: str | None = None    # a shared-memory store to materialize pinned snapshots into

    def open(self) -> "RegistrySource":
        on_features = None
        if self.feature_store:
            from registry.materialize import HostMaterializer

            on_features = HostMaterializer(self.feature_store, self.registry).ensure
        return RegistrySource(self.registry, self.name, self.env, interval_s=self.interval_s,
                              cache_dir=self.cache_dir, on_features=on_features)


class RegistrySource:
    """The champion of deployment ``name`` in ``env``, followed (see the module docstring)."""

    def __init__(self, registry: Any, name: str, env: str, *, interval_s: float = 1.0,
                 cache_dir: str | os.PathLike | None = None, actor: str | None = None,
                 on_features: Callable[[Any], None] | None = None) -> None:
        """``registry``: a URI or an open ``Registry``. ``on_features(deployment)``: called when the
        deployment's pinned FeatureSnapshot changes (raise to refuse the deployment)."""
        self.registry_uri = registry if isinstance(registry, str) else None
        self._reg = registry if not isinstance(registry, str) else None
        self.name, self.env = name, env
        self.interval_s = interval_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.actor = actor or job_actor()
        self.on_features = on_features
        self.revision: int | None = None       # the deployment revision last acted on
        self.serving_version: int | None = None
        self.features: str | None = None       # name@version of the pinned snapshot last materialized
        self.available = True                  # False while the registry cannot be reached
        self.refusals = 0
        self._revision_stamp = ""       # when the revision followed was made: markers name it too
        self.wakeups = 0                       # waits ended by a change (NOTIFY on PostgreSQL), not a timeout
        self._offers: queue.Queue[Candidate] = queue.Queue()
        self._reports: queue.Queue[tuple[int, str]] = queue.Queue()
        self._comparisons: queue.Queue[tuple[dict, str]] = queue.Queue()
        self._plan = ChallengerPlan(salt=self.salt)
        self._plan_revision: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the registry --------------------------------------------------------------------------------
    def _registry(self):
        if self._reg is None:
            from registry import open_registry

            self._reg = open_registry(self.registry_uri)
        return self._reg

    def _fetch(self, mv) -> Path:
        return self._registry().fetch_model(mv, cache_dir=self.cache_dir)

    def _candidate(self, deployment, path: Path) -> Candidate:
        mv = deployment.champion
        return Candidate(path, name=mv.name, version=str(mv.version), token=deployment.revision)

    @property
    def salt(self) -> str:
        """What picks a canary's entities: the deployment, ``name/env``."""
        return f"{self.name}/{self.env}"

    def challengers(self) -> ChallengerPlan:
        """The deployment's shadows and canary now (the follower thread replaces the plan whole on
        every revision; reading it never blocks)."""
        return self._plan

    def _update_plan(self, deployment) -> None:
        if deployment.revision == self._plan_revision:
            return
        self._plan = challenger_plan(deployment, self._fetch, self.salt)
        self._plan_revision = deployment.revision

    def record_comparison(self, summary: dict, role: str) -> None:
        """A comparison window the scorer closed: stored in the registry by the follower thread
        (the scorer never waits on the database; kept until the registry takes it)."""
        self._comparisons.put((summary, role))

    # ModelSource -------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        """Where this host remembers what it last served of this deployment."""
        from registry.artifacts import default_cache_dir

        key = hashlib.sha256(f"{self.registry_uri or self._reg!r}|{self.name}|{self.env}".encode()).hexdigest()[:24]
        root = self.cache_dir or default_cache_dir() / "registry"
        return Path(root) / "serving" / f"{key}.json"

    def _remember(self, candidate: Candidate) -> None:
        path = self._state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(candidate.path), "name": candidate.name,
                                   "version": candidate.version, "revision": candidate.token}))
        os.replace(tmp, path)

    def _last_served(self) -> Candidate | None:
        """What this host served last, if its cached artifact is still intact (sha256 = its folder)."""
        from registry.artifacts import sha256_of

        try:
            state = json.loads(self._state_path().read_text())
            path = Path(state["path"])
            if sha256_of(path)[0] != path.parent.name:
                return None
        except (OSError, ValueError, KeyError):
            return None
        return Candidate(path, name=state["name"], version=state["version"], token=state["revision"])

    def initial(self) -> Candidate:
        """The deployment's champion now, fetched and verified (raises RegistryError: no start
        without a model). Starts the follower thread. If the registry cannot be reached, the
        version this host served last (its cached artifact, sha256 checked again) serves until the
        registry is back (a worker restarted by Flink during a registry outage keeps scoring)."""
        from registry import RegistryUnavailable

        try:
            return self._initial()
        except RegistryUnavailable as exc:
            last = self._last_served()
            if last is None:
                raise
            log.warning("registry for %s/%s unreachable at start (%s); serving the last version this host "
                        "served, %s, until it is back", self.name, self.env, exc, last.describe())
            self.available = False
            self.revision = last.token
            self._start()
            return last

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name=f"registry-follow-{self.name}", daemon=True)
        self._thread.start()

    def _initial(self) -> Candidate:
        from registry import RegistryError

        reg = self._registry()
        deployment = reg.deployment(self.name, self.env)
        if deployment is None:
            raise RegistryError(f"no deployment of {self.name!r} in {self.env!r}: promote a version first "
                                f"(streamscore registry promote {self.name} VERSION --env {self.env})")
        self._materialize(deployment)
        candidate = self._candidate(deployment, self._fetch(deployment.champion))
        self._update_plan(deployment)
        self.revision, self._revision_stamp = deployment.revision, _stamp(deployment)
        self._start()
        return candidate

    def poll(self) -> Candidate | None:
        """The newest queued replacement (older ones are skipped), never blocking."""
        offer = None
        while True:
            try:
                offer = self._offers.get_nowait()
            except queue.Empty:
                return offer

    def accepted(self, candidate: Candidate, model: Model) -> None:
        self.serving_version = int(candidate.version) if candidate.version else None
        try:
            self._remember(candidate)
        except OSError as exc:
            log.warning("could not remember the served version in %s: %s", self._state_path(), exc)

    def refused(self, candidate: Candidate, reason: str) -> None:
        """Recorded in the audit log by the follower thread (the scorer never waits on the DB)."""
        self.refusals += 1
        self._reports.put((int(candidate.version), reason))

    def stop(self) -> None:
        """Stop following (the thread ends after its current wait; ``close`` also waits for it)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=min(self.interval_s, 5.0) + 1)
        if self.registry_uri is not None and self._reg is not None:     # opened here: release its connections
            self._reg.close()

    def __str__(self) -> str:
        return f"registry deployment {self.name}/{self.env}"

    # the follower thread -------------------------------------------------------------------------
    def _follow(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            try:
                self._report_refusals()
                self._report_comparisons()
                self._step()
                if not self.available:
                    log.warning("registry for %s/%s is reachable again; following it", self.name, self.env)
                self.available, backoff = True, self.interval_s
                if self._registry().wait_for_change(self.name, self.env, self.interval_s,
                                                    since_revision=self.revision):
                    self.wakeups += 1
            except Exception as exc:  # noqa: BLE001 - an unreachable registry must not stop the scorer
                if self.available:
                    log.warning("registry for %s/%s unreachable (%s: %s); the serving model stays, retrying",
                                self.name, self.env, type(exc).__name__, str(exc)[:300])
                self.available = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10 * self.interval_s)

    def step(self) -> None:
        """One look at the deployment (what the thread does every change or ``interval_s``)."""
        self._report_refusals()
        self._report_comparisons()
        self._step()

    def _step(self) -> None:
        deployment = self._registry().deployment(self.name, self.env)
        if deployment is None or deployment.revision == self.revision:
            return
        self._update_plan(deployment)
        revision, self.revision = self.revision, deployment.revision
        self._revision_stamp = _stamp(deployment)
        log.info("registry deployment %s/%s: revision %s -> %s (champion version %s)", self.name, self.env,
                 revision, deployment.revision, deployment.champion.version)
        mv = deployment.champion
        try:
            self._materialize(deployment)
            path = self._fetch(mv)
        except Exception as exc:  # noqa: BLE001 - sha256 mismatch, unreadable artifact, incompatible snapshot
            from registry import RegistryUnavailable

            if isinstance(exc, (RegistryUnavailable, OSError)):
                self.revision = revision        # not a refusal: look again when the registry/storage is back
                raise
            try:
                self._record(mv.version, f"{type(exc).__name__}: {exc}"[:500])
            finally:
                self.refusals += 1
            return
        if mv.version == self.serving_version and not self._offers.qsize():
            return                               # e.g. only the feature snapshot changed
        self._offers.put(self._candidate(deployment, path))

    def _materialize(self, deployment) -> None:
        snapshot = deployment.features
        if snapshot is None or self.on_features is None:
            return
        ref = f"{snapshot.name}@{snapshot.version}"
        if ref != self.features:
            self.on_features(deployment)
            self.features = ref

    def _report_refusals(self) -> None:
        self._drain(self._reports, lambda item: self._record(*item))

    def _report_comparisons(self) -> None:
        self._drain(self._comparisons, self._record_comparison)

    @staticmethod
    def _drain(pending: queue.Queue, record: Callable[[Any], None]) -> None:
        """``record`` every queued item; one that fails goes back to the queue and the error is
        raised (the registry is away: it is recorded when it is back)."""
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                record(item)
            except Exception:
                pending.put(item)
                raise

    def _record_comparison(self, item: tuple[dict, str]) -> None:
        from registry import RegistryError, RegistryUnavailable

        summary, role = item
        try:
            self._registry().record_comparison(self.name, self.env, summary, role=role)
        except RegistryError as exc:
            if isinstance(exc, RegistryUnavailable):
                raise
            log.error("comparison window not recorded: %s", exc)    # not a pair of this deployment

    def _record(self, version: int, reason: str) -> None:
        """Into the audit log, once per host for a (revision, version): the host's other workers
        refusing the same thing for the same reason find the marker and only log it."""
        log.error("registry deployment %s/%s: version %s refused by %s: %s", self.name, self.env, version,
                  self.actor, reason)
        # the revision's time in the name: a registry made again at the same place (same uri, name,
        # env, revision numbers) is another registry, whose refusals must be recorded again
        marker = self._state_path().with_name(
            f"{self._state_path().stem}-refused-r{self.revision}{self._revision_stamp}-v{version}")
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))     # atomic: one worker claims it
        except FileExistsError:
            return
        except OSError:
            marker = None                    # no marker possible: record it anyway
        try:
            self._registry().record_refusal(self.name, self.env, version, actor=self.actor, reason=reason)
        except BaseException:
            if marker is not None:
                marker.unlink(missing_ok=True)   # not recorded: the next attempt (any worker) claims it again
            raise


def challenger_plan(deployment: Any, fetch: Callable[[Any], Path], salt: str) -> ChallengerPlan:
    """The deployment's shadows and canary as a ``ChallengerPlan``, each fetched with ``fetch``
    (model version → local file); one that cannot be fetched is offered with its error (the
    scorer skips it, counted)."""
    offers = [*(("shadow", mv, 1.0) for mv in deployment.shadows),
              *((("canary", deployment.canary, deployment.canary_share),) if deployment.canary else ())]
    out = []
    for role, mv, share in offers:
        try:
            path = fetch(mv)
        except Exception as exc:  # noqa: BLE001 - a challenger that cannot be fetched is skipped, counted
            log.error("registry deployment %s/%s: %s v%s cannot be fetched, not scored: %s", deployment.name,
                      deployment.env, role, mv.version, exc)
            out.append(ChallengerOffer(role, None, share, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        out.append(ChallengerOffer(role, Candidate(path, name=mv.name, version=str(mv.version)), share))
    return ChallengerPlan(tuple(out), salt)


# -- engines that swap models through a side input (Beam's RunInference) ------------------------

CHAMPION_CHANGES = ("promote", "rollback")


def model_id(path: str | os.PathLike, name: str, version: int | str) -> str:
    """A model id naming a local file and its registered identity: ``<path>#name=<n>&version=<v>``
    (``operators.beam.inference`` loads the file under that name and version)."""
    return f"{path}#name={name}&version={version}"


def champion_model_id(registry: Any, name: str, env: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The model id of the deployment's champion, fetched into the per-host cache (sha256 checked)."""
    from registry import RegistryError

    reg = _open(registry)
    deployment = reg.deployment(name, env)
    if deployment is None:
        raise RegistryError(f"no deployment of {name!r} in {env!r}")
    mv = deployment.champion
    return model_id(reg.fetch_model(mv, cache_dir=cache_dir), mv.name, mv.version)


def deployment_challengers(registry: Any, name: str, env: str,
                           cache_dir: str | os.PathLike | None = None) -> ChallengerPlan:
    """The deployment's shadows and canary now, fetched into the per-host cache (sha256 checked),
    salt ``name/env`` as a following job uses: for engines that take the plan once at start."""
    from registry import RegistryError

    reg = _open(registry)
    deployment = reg.deployment(name, env)
    if deployment is None:
        raise RegistryError(f"no deployment of {name!r} in {env!r}")
    return challenger_plan(deployment, lambda mv: reg.fetch_model(mv, cache_dir=cache_dir), f"{name}/{env}")


def champion_schedule(registry: Any, name: str, env: str, window_s: float,
                      cache_dir: str | os.PathLike | None = None) -> dict[float, str]:
    """``{start_s: model id}``: which version was champion from when, from the audit log, each
    change taking effect at the first ``window_s`` boundary at or after it (an event is never
    scored by a version promoted after its window began; of several changes in one window the
    last counts). For replays on runners whose side inputs do not update while they run."""
    reg = _open(registry)
    changes = [e for e in reversed(reg.history(name, env=env, limit=100_000)) if e.action in CHAMPION_CHANGES]
    schedule: dict[float, str] = {}
    paths: dict[int, str] = {}
    for entry in changes:
        version = int(entry.to_version)
        if version not in paths:
            mv = reg.model_version(name, version)
            paths[version] = model_id(reg.fetch_model(mv, cache_dir=cache_dir), mv.name, mv.version)
        start = math.ceil(entry.at.timestamp() / window_s) * window_s
        schedule[float(start)] = paths[version]
    return schedule


def _open(registry: Any):
    if isinstance(registry, str):
        from registry import open_registry

        return open_registry(registry)
    return registry


def _stamp(deployment: Any) -> str:
    """``-<microseconds since the epoch>`` of the deployment's last change, or "" if unknown."""
    at = getattr(deployment, "updated_at", None)
    return f"-{int(at.timestamp() * 1e6)}" if at is not None else ""
