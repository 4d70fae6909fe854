"""A model file that is watched and replaced while it serves.

Deploy a new model by replacing the file (write it next to the old one, then rename it over:
``mv fraud.onnx.new fraud.onnx``). The scorer notices within ``check_interval_s`` and loads it;
if the new file cannot be loaded (truncated, corrupt, hostile) or needs inputs the serving
model did not, the serving model keeps serving and the failure is logged and counted.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from model_formats.base import Model
from model_formats.loader import load_model

log = logging.getLogger(__name__)


class ReloadingModel:
    """Holds the model loaded from ``path`` and swaps in a replacement file once it loads.

    The first load happens here and raises: a job must not start without a valid model.
    ``loader``: how to load the file (default :func:`load_model` with ``load_options``)."""

    def __init__(self, path: str | os.PathLike, check_interval_s: float = 5.0,
                 loader: Callable[[Path], Model] | None = None, **load_options) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._load = loader or (lambda p: load_model(p, **load_options))
        self._signature = self._stat()
        self.model: Model = self._load(self.path)
        self._next_check = time.monotonic() + check_interval_s
        self.reloads = 0              # replacements that took over
        self.failures = 0             # replacements refused (the serving model stayed)
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> Model:
        """The model to score with now (checks the file at most every ``check_interval_s``)."""
        if self.check_interval_s > 0 and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_interval_s
            self.check()
        return self.model

    def check(self) -> bool:
        """Load the file if it changed since the last attempt; True when a new model took over."""
        signature = self._stat()
        if signature is None or signature == self._signature:
            return False           # unchanged, or gone (mid-rename, deleted): keep serving
        self._signature = signature  # each version of the file is tried once
        try:
            candidate = self._load(self.path)
        except Exception as exc:  # noqa: BLE001 - whatever a bad file raises, the serving model stays
            return self._refuse(f"{type(exc).__name__}: {exc}")
        missing = _new_required_inputs(self.model, candidate)
        if missing:
            candidate.close()
            return self._refuse(f"it requires inputs the serving model does not: {missing}")
        old, self.model = self.model, candidate
        old.close()
        self.reloads += 1
        log.info("model %s replaced: now %s version %s", self.path, candidate.name, candidate.version)
        return True

    def _refuse(self, why: str) -> bool:
        self.failures += 1
        self.last_error = why[:500]
        log.error("model file %s was replaced but is refused (%s); %s version %s keeps serving",
                  self.path, self.last_error, self.model.name, self.model.version)
        return False

    def close(self) -> None:
        self.model.close()


def _new_required_inputs(serving: Model, candidate: Model) -> list[str]:
    known = set(serving.schema.input_names)
    return [f.name for f in candidate.schema.inputs if f.required and f.name not in known]
