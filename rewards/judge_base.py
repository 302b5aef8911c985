"""The judge interface every grader implements, and the sync helpers the training loop calls.

    python -c "from rewards.judge_base import Judge, STAT_KEYS; print(STAT_KEYS)"

Graders (rewards/judge.py KeywordJudge, rewards/openai_judge.py, rewards/local_judge.py) subclass `Judge` from here;
the factory `make_judge` lives in rewards/judge.py and imports them, so the import graph runs one way:
judge_base ← openai_judge / local_judge ← judge. Import from rewards.judge in user code; it re-exports all of this.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from rewards.rubric import Rubric

Item = tuple  # (question messages: list[dict], completion: str, rubric: Rubric)

MODES = ("per_criterion", "per_completion")  # the openai judge's: one call per rubric criterion | per answer
STAT_KEYS = ("calls", "criteria", "unknown", "cache_hits", "duplicates", "errors", "reasks",
             "prompt_tokens", "completion_tokens")


class Judge:
    """Base class. Subclasses implement `_grade` (and `_rate`); `grade` counts verdicts, `grade_many` runs items
    concurrently and grades identical (question, completion, rubric) items once — GRPO groups often repeat a
    completion. `_open` / `_close` bracket each outermost call, so per-event-loop resources (an HTTP client, a
    semaphore) are made and released on the loop that uses them."""

    def __init__(self):
        self._stats = Counter({k: 0 for k in STAT_KEYS})
        self._depth = 0

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def _active(self):
        self._depth += 1
        try:
            if self._depth == 1:
                await self._open()
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                await self._close()

    async def _grade(self, question: list, completion: str, rubric: Rubric) -> list:
        raise NotImplementedError

    async def _rate(self, question: list, completion: str, rubric: Rubric) -> float | None:
        raise NotImplementedError(f"{type(self).__name__} has no rating mode; use OpenAIJudge for rar_implicit")

    async def grade(self, question: list[dict], completion: str, rubric: Rubric) -> list[bool | None]:
        async with self._active():
            verdicts = list(await self._grade(question, completion, rubric))
        if len(verdicts) != len(rubric):
            raise RuntimeError(f"{type(self).__name__} returned {len(verdicts)} verdicts for {len(rubric)} criteria")
        self._stats["criteria"] += len(verdicts)
        self._stats["unknown"] += sum(v is None for v in verdicts)
        return verdicts

    async def grade_many(self, items: Sequence[Item]) -> list[list[bool | None]]:
        keys = [(repr(q), c, repr(r)) for q, c, r in items]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first.values())
        self._stats["duplicates"] += len(items) - len(unique)
        async with self._active():
            results = await asyncio.gather(*(self.grade(*items[i]) for i in unique))
        by_key = {keys[i]: r for i, r in zip(unique, results)}
        return [list(by_key[k]) for k in keys]

    async def rate(self, question: list[dict], completion: str, rubric: Rubric) -> float | None:
        """One 1–10 Likert rating of the whole response against the rubric (RaR implicit aggregation)."""
        async with self._active():
            return await self._rate(question, completion, rubric)

    async def rate_many(self, items: Sequence[Item]) -> list[float | None]:
        async with self._active():
            return list(await asyncio.gather(*(self.rate(*it) for it in items)))

    def stats(self) -> dict[str, float]:
        """Cumulative counters, namespaced for the metrics line: judge/calls, judge/unknown, judge/cache_hits, ..."""
        return {f"judge/{k}": float(v) for k, v in sorted(self._stats.items())}

    def load_stats(self, stats: dict) -> None:
        """Continue the counters of `stats()` saved in a checkpoint (a resumed run counts on from there)."""
        for k, v in stats.items():
            if k.startswith("judge/") and k[6:] in STAT_KEYS:
                self._stats[k[6:]] = int(v)

    def describe(self) -> str:
        """Where verdicts come from, and the last failure if any — for the message that stops a run."""
        where = getattr(self, "base_url", None) or ("api.openai.com" if hasattr(self, "base_url") else None)
        last = getattr(self, "last_error", None)
        return f"{type(self).__name__}" + (f" at {where}" if where else "") + (f", last error: {last}" if last else "")


def _run(coro_fn):
    """Run coro_fn() to completion from sync code; from inside a running loop (a notebook) it runs on a helper
    thread with its own loop, since a running loop cannot be re-entered."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


def grade_sync(judge: Judge, items: Sequence[Item]) -> list[list[bool | None]]:
    """judge.grade_many(items) from sync code (the training loop)."""
    return _run(lambda: judge.grade_many(items))


def rate_sync(judge: Judge, items: Sequence[Item]) -> list[float | None]:
    """judge.rate_many(items) from sync code: 1–10 ratings for rewards.functions.rar_implicit."""
    return _run(lambda: judge.rate_many(items))
