"""One error hierarchy for the registry: every failure a caller can act on is a ``RegistryError``."""
from __future__ import annotations

import difflib
from typing import Iterable


class RegistryError(Exception):
    """A registry operation failed; the message is one line naming what and why."""


class NotFound(RegistryError):
    """A model, version, snapshot, environment or deployment that does not exist; the message lists
    what does (and the nearest name for a typo)."""

    def __init__(self, what: str, wanted: object, existing: Iterable[object] = ()) -> None:
        existing = [str(e) for e in existing]
        close = difflib.get_close_matches(str(wanted), existing, n=1, cutoff=0.6) or \
            [e for e in existing if str(wanted) and e.startswith(str(wanted))][:1]
        hint = f"; did you mean {close[0]}?" if close else ""
        listing = f" (existing: {', '.join(existing[:20])}{' …' if len(existing) > 20 else ''})" if existing \
            else " (none registered yet)"
        super().__init__(f"no {what} {wanted!s}{hint}{listing}")
        self.what, self.wanted, self.existing = what, wanted, existing


class Conflict(RegistryError):
    """Someone else changed the same thing first (a concurrent promotion, a duplicate version):
    re-read and retry."""


class PolicyRefused(RegistryError):
    """The promotion policy or a schema check refused the change; the message names the mismatch."""


class ArtifactError(RegistryError):
    """An artifact that cannot be fetched, whose sha256/size differ from the registered ones, or that
    model_formats cannot load."""


class RegistryUnavailable(RegistryError):
    """The registry database cannot be reached."""
