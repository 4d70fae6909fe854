"""The one retry policy of the pipeline (tenacity underneath), for both engines.

Connectors fail fast and say why (a feature store raises ``FeatureStoreUnavailable`` at once);
whether and when to try again is decided here and nowhere else: the Flink enrichment calls
:meth:`RetryPolicy.call_async`, the Beam enrichment :meth:`RetryPolicy.call`, and both give their
engine's own operation timeout as :meth:`RetryPolicy.budget_s`.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, ClassVar, TypeVar

from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

T = TypeVar("T")
OnFailure = Callable[[BaseException], None]


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after a failed one, ``backoff_s`` apart; an async attempt that
    takes longer than ``attempt_timeout_s`` counts as failed (``TimeoutError``)."""

    retries: int = 5
    attempt_timeout_s: float = 1.0
    backoff_s: float = 0.5

    SLACK_S: ClassVar[float] = 5.0     # room for the engines' hand-offs around the attempts, and for a
                                       # synchronous attempt (Beam) whose store operations run over

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def budget_s(self) -> float:
        """The longest a retried call may take: every attempt timing out, the waits between them,
        and a little slack. The engines' operation timeouts are this, never another formula."""
        return self.attempts * self.attempt_timeout_s + self.retries * self.backoff_s + self.SLACK_S

    def _options(self, retry_on: tuple[type[BaseException], ...], attempts: int) -> dict:
        return {"stop": stop_after_attempt(attempts), "wait": wait_fixed(self.backoff_s),
                "retry": retry_if_exception_type(retry_on), "reraise": True}

    def call(self, fn: Callable[[], T], *, retry_on: tuple[type[BaseException], ...],
             on_failure: OnFailure | None = None) -> T:
        """``fn()``, tried again on ``retry_on``; the last attempt's exception propagates.
        ``on_failure`` sees every failed attempt (metrics, logs)."""
        try:
            return _observed(fn, retry_on, on_failure)     # the hot path: no retry bookkeeping
        except retry_on:
            if not self.retries:
                raise
        time.sleep(self.backoff_s)
        for attempt in Retrying(**self._options(retry_on, self.retries)):
            with attempt:
                return _observed(fn, retry_on, on_failure)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def call_async(self, fn: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...],
                         on_failure: OnFailure | None = None) -> T:
        """``await fn()`` with the per-attempt timeout, tried again on ``retry_on`` or
        ``TimeoutError``; waits with ``asyncio.sleep`` (never blocks the event loop)."""
        retry_on = retry_on + (TimeoutError,)

        async def attempt_once() -> T:
            try:
                try:
                    return await asyncio.wait_for(fn(), self.attempt_timeout_s)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"attempt took longer than {self.attempt_timeout_s * 1000:.0f} ms") from None
            except retry_on as exc:
                if on_failure is not None:
                    on_failure(exc)
                raise

        try:
            return await attempt_once()       # the hot path: no retry bookkeeping (tenacity costs ~0.4 ms)
        except retry_on:
            if not self.retries:
                raise
        await asyncio.sleep(self.backoff_s)
        async for attempt in AsyncRetrying(**self._options(retry_on, self.retries)):
            with attempt:
                return await attempt_once()
        raise AssertionError("unreachable: tenacity re-raises the last failure")


def _observed(fn: Callable[[], T], retry_on: tuple[type[BaseException], ...], on_failure: OnFailure | None) -> T:
    try:
        return fn()
    except retry_on as exc:
        if on_failure is not None:
            on_failure(exc)
        raise
