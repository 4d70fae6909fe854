"""A model that is replaced while it serves, from a pluggable source of new versions.

Where the next version comes from is a :class:`ModelSource`: :class:`FileSource` watches one
model file (deploy by replacing it: write it next to the old one, then rename it over:
``mv fraud.onnx.new fraud.onnx``); ``registry.follow.RegistrySource`` follows a registry
deployment. Whatever the source, one code path swaps: the replacement is loaded beside the
serving model, checked (it loads; it needs no input the serving model did not), and swapped in
between micro-batches; if it is refused, the serving model keeps serving, the failure is logged
and counted, and the source is told (a registry records the refusal in its audit log).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from model_formats.base import Model
from model_formats.loader import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A model version a source offers: a local file to load, and what to call it.

    ``name``/``version``: override what the file says (a registry's name and version number, so
    predictions name the registered version); None keeps the file's. ``token``: how the source
    identifies this offer (a file signature, a deployment revision)."""
    path: Path
    name: str | None = None
    version: str | None = None
    token: Any = None

    def describe(self) -> str:
        who = f"{self.name or '?'} version {self.version or '?'}"
        return f"{who} ({self.path})" if self.name or self.version else str(self.path)


@dataclass(frozen=True)
class ChallengerOffer:
    """A model to score beside the serving one: ``role`` ``shadow`` (scored, never served) or
    ``canary`` (serves ``share`` of the entities). ``error``: it could not be fetched (the scorer
    skips it, counted)."""
    role: str
    candidate: Candidate | None
    share: float = 1.0
    error: str | None = None

    @property
    def key(self) -> tuple:
        """What identifies the model itself (a new offer of the same key keeps the loaded model)."""
        c = self.candidate
        return (self.role, str(c.path) if c else None, c.name if c else None, c.version if c else None)


@dataclass(frozen=True)
class ChallengerPlan:
    """Every challenger a scorer runs beside its serving model, and the ``salt`` that picks the
    canary's entities (the deployment: the same entities on every host, engine and restart)."""
    challengers: tuple[ChallengerOffer, ...] = ()
    salt: str = ""

    @property
    def canary(self) -> ChallengerOffer | None:
        return next((c for c in self.challengers if c.role == "canary" and c.share > 0), None)

    @property
    def shadows(self) -> tuple[ChallengerOffer, ...]:
        return tuple(c for c in self.challengers if c.role == "shadow")


@runtime_checkable
class ModelSource(Protocol):
    """Where a serving model's next version comes from (called from the scoring thread only)."""

    def initial(self) -> Candidate:
        """The version to start with; raises when there is none (a job must not start without one)."""

    def poll(self) -> Candidate | None:
        """A replacement to try now, or None. Called between micro-batches: must not block long."""

    def accepted(self, candidate: Candidate, model: Model) -> None:
        """``candidate`` took over."""

    def refused(self, candidate: Candidate, reason: str) -> None:
        """``candidate`` was refused (``reason``); the serving model stays."""

    def close(self) -> None:
        """Stop watching."""


class FileSource:
    """One model file, replaced in place: a new version is a new (inode, size, mtime) of the path;
    each version of the file is offered once."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._signature = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def initial(self) -> Candidate:
        self._signature = self._stat()
        return Candidate(self.path, token=self._signature)

    def poll(self) -> Candidate | None:
        signature = self._stat()
        if signature is None or signature == self._signature:
            return None            # unchanged, or gone (mid-rename, deleted): keep serving
        self._signature = signature  # each version of the file is tried once
        return Candidate(self.path, token=signature)

    def accepted(self, candidate: Candidate, model: Model) -> None:
        pass

    def refused(self, candidate: Candidate, reason: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return f"model file {self.path}"


class ReloadingModel:
    """Holds the serving model and swaps in the replacements its ``source`` offers once they load.

    ``source``: a :class:`ModelSource`, or a model file path (a :class:`FileSource`). The first
    load happens here and raises: a job must not start without a valid model. ``loader``: how to
    load a candidate's file (default :func:`load_model` with ``load_options`` and the candidate's
    name and version). ``check_interval_s``: how often ``current()`` asks the source (0: never)."""

    def __init__(self, source: ModelSource | str | os.PathLike, check_interval_s: float = 5.0,
                 loader: Callable[[Path], Model] | None = None, **load_options) -> None:
        self.source: ModelSource = source if isinstance(source, ModelSource) else FileSource(source)
        self.check_interval_s = check_interval_s
        self._loader = loader
        self._load_options = load_options
        self.serving = self.source.initial()
        self.model: Model = self._load(self.serving)
        self.source.accepted(self.serving, self.model)
        self._next_check = time.monotonic() + check_interval_s
        self.reloads = 0              # replacements that took over
        self.failures = 0             # replacements refused (the serving model stayed)
        self.last_error: str | None = None

    @property
    def path(self) -> Path:
        """The file the serving model was loaded from."""
        return self.serving.path

    def _load(self, candidate: Candidate) -> Model:
        if self._loader is not None:
            model = self._loader(candidate.path)
            if candidate.name:
                model.name = candidate.name
            if candidate.version:
                model.version = candidate.version
            return model
        identity = {k: v for k, v in (("name", candidate.name), ("version", candidate.version)) if v}
        return load_model(candidate.path, **{**self._load_options, **identity})

    def current(self) -> Model:
        """The model to score with now (asks the source at most every ``check_interval_s``)."""
        if self.check_interval_s > 0 and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_interval_s
            self.check()
        return self.model

    def check(self) -> bool:
        """Try the source's replacement, if it offers one; True when a new model took over."""
        candidate = self.source.poll()
        return False if candidate is None else self.offer(candidate)

    def offer(self, candidate: Candidate) -> bool:
        """Load ``candidate`` beside the serving model, check it and swap it in; True when it took over."""
        try:
            loaded = self._load(candidate)
        except Exception as exc:  # noqa: BLE001 - whatever a bad file raises, the serving model stays
            return self._refuse(candidate, f"{type(exc).__name__}: {exc}")
        missing = _new_required_inputs(self.model, loaded)
        if missing:
            loaded.close()
            return self._refuse(candidate, f"it requires inputs the serving model does not: {missing}")
        old, self.model, self.serving = self.model, loaded, candidate
        old.close()
        self.reloads += 1
        log.info("model %s replaced: now %s version %s", candidate.path, loaded.name, loaded.version)
        self.source.accepted(candidate, loaded)
        return True

    def _refuse(self, candidate: Candidate, why: str) -> bool:
        self.failures += 1
        self.last_error = why[:500]
        log.error("model %s is refused (%s); %s version %s keeps serving",
                  candidate.describe(), self.last_error, self.model.name, self.model.version)
        try:
            self.source.refused(candidate, self.last_error)
        except Exception:  # noqa: BLE001 - telling the source must not stop the serving model
            log.exception("could not report the refusal of %s", candidate.describe())
        return False

    def close(self) -> None:
        self.model.close()
        self.source.close()


class FollowedModel:
    """A model-like view of a :class:`ReloadingModel`, for holders that keep one model object
    (a route, a combination of routed models): every attribute is the serving model's.
    :meth:`refresh`, called once per batch before it is scored, takes the replacement the source
    offers, so one batch is never scored by two versions nor named after the other one."""

    def __init__(self, reloading: ReloadingModel) -> None:
        self.reloading = reloading

    def refresh(self) -> None:
        """Swap in the source's replacement, if it offers one and the check interval has passed."""
        self.reloading.current()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reloading.model, name)

    def close(self) -> None:
        self.reloading.close()


def _new_required_inputs(serving: Model, candidate: Model) -> list[str]:
    known = set(serving.schema.input_names)
    return [f.name for f in candidate.schema.inputs if f.required and f.name not in known]
