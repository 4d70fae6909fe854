"""One-line error messages for the command line: what went wrong and where, never a traceback
(``streamscore --debug ...`` keeps tracebacks)."""
from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem the user can fix (a missing file, an unknown topic, a store that is down); its
    message is the one line the command prints."""


def config_problems(exc) -> list[str]:
    """A pydantic ``ValidationError`` of the job config as short sentences naming each key,
    with the nearest known key for a typo."""
    from jobs.config import JobConfig

    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        dotted = ".".join(loc) or "(top level)"
        if error.get("type") == "extra_forbidden":
            known = _known_keys(JobConfig, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = f" (did you mean {'.'.join(loc[:-1] + close)}?)" if close else \
                (f" (known: {', '.join(known)})" if known else "")
            problems.append(f"unknown key {dotted}{hint}")
        else:
            message = error.get("msg", "invalid").removeprefix("Value error, ")
            problems.append(f"{dotted}: {message}")
    return problems


def _known_keys(model, path: list[str]) -> list[str]:
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not hasattr(field.annotation, "model_fields"):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def one_line(exc: BaseException, config_path: str | None = None) -> str:
    """The message for ``exc`` on one line."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        where = f"{config_path}: " if config_path else "config: "
        return where + "; ".join(config_problems(exc))
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file: {exc.filename}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (UserError, ValueError, OSError, TimeoutError)):
        return text
    return f"{type(exc).__name__}: {text}"
