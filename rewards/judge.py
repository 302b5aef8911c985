"""Judges: from (question, completion, rubric) to one verdict per criterion — True / False / None (unknown).

    python -c "from rewards.judge import make_judge, grade_sync; from data import load_samples, bundled_demo_path; \
s = load_samples(bundled_demo_path())[0]; print(grade_sync(make_judge('keyword'), [(s.prompt, 'call emergency services', s.rubric)]))"

One async interface, three graders:
- KeywordJudge (here): offline, deterministic toy grader — the CPU demo and the tests use it.
- OpenAIJudge (rewards/openai_judge.py): any OpenAI-compatible chat-completions server.
- LocalJudge (rewards/local_judge.py): a transformers causal LM answering yes/no, e.g. the policy's own base weights.
For a negative-points criterion True means the pitfall happened (HealthBench convention). A verdict the judge
could not produce is None, never a silent False; the reward functions drop it.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from rewards.rubric import Rubric

Item = tuple  # (question messages: list[dict], completion: str, rubric: Rubric)

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


# ---- the keyword judge ----
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits and '_' split words
STOPWORDS = frozenset("""
about above after again against also among another because been before being below between both cannot could does
doing down during each either else every from further have having here hers herself himself however into itself just
like more most much must need only other ours over same shall should since some such than that their theirs them
then there these they this those through under until upon very were what when where whether which while whom whose
will with within without would your yours yourself
""".split())
# words every rubric uses to frame a criterion; they say nothing about the answer's content
RUBRIC_VERBS = frozenset("""
mention mentions mentioned explain explains explained state states stated recommend recommends recommended identify
identifies identified response responses advise advises advised suggest suggests suggested provide provides provided
include includes included describe describes described note notes noted discuss discusses discussed indicate
indicates emphasize emphasizes emphasise emphasises highlight highlights acknowledge acknowledges correctly clearly
appropriately answer answers user asks
""".split())


def keywords(criterion: str) -> tuple[str, ...]:
    """Content keywords of a criterion: distinct lowercased letter-runs of ≥ 4 letters, minus STOPWORDS and
    RUBRIC_VERBS, in order of first appearance."""
    words = (w.lower() for w in _WORD.findall(criterion))
    return tuple(dict.fromkeys(w for w in words if len(w) >= 4 and w not in STOPWORDS and w not in RUBRIC_VERBS))


def keyword_verdict(criterion: str, completion: str) -> bool | None:
    """The KeywordJudge rule: None when the criterion has no keywords, else True iff at least ceil(k/2) of its k
    keywords occur as whole words (lowercased letter-runs) in the completion."""
    keys = keywords(criterion)
    if not keys:
        return None
    present = {w.lower() for w in _WORD.findall(completion)}
    return sum(k in present for k in keys) >= math.ceil(len(keys) / 2)


class KeywordJudge(Judge):
    """A TOY grader, offline and deterministic: criterion i is met when at least half (rounded up) of its content
    keywords appear in the completion.

    Keywords of a criterion = its distinct lowercased words (runs of letters) of ≥ 4 letters, minus a stopword list
    and generic rubric verbs ("mentions", "explains", "states", "recommends", "identifies", "response", ...).
    A keyword occurs when it equals a lowercased word of the completion (a word-boundary match: "aspirin" does not
    match "aspirins"). A criterion with no keywords gets None (unknown). Negative criteria use the same rule, so a
    pitfall "happened" when its keywords occur. There is no understanding here — no negation, no paraphrase — which
    is the point: a policy can raise its reward by emitting the right words, so the CPU demo visibly learns.
    """

    async def _grade(self, question, completion, rubric):
        self._stats["calls"] += 1
        return [keyword_verdict(c.text, completion) for c in rubric]


def make_judge(kind: str, **kwargs) -> Judge:
    """Build a judge by name: "keyword" (no kwargs), "openai" (OpenAIJudge kwargs), "local" (LocalJudge kwargs)."""
    if kind == "keyword":
        if kwargs:
            raise ValueError(f"the keyword judge takes no options, got {sorted(kwargs)}")
        return KeywordJudge()
    if kind == "openai":
        from rewards.openai_judge import OpenAIJudge
        return OpenAIJudge(**kwargs)
    if kind == "local":
        from rewards.local_judge import LocalJudge
        return LocalJudge(**kwargs)
    raise ValueError(f"unknown judge {kind!r}: choose keyword (offline toy), openai (any OpenAI-compatible server) "
                     f"or local (a transformers model)")


def __getattr__(name):  # `from rewards.judge import OpenAIJudge` without importing openai/torch for the keyword judge
    if name == "OpenAIJudge":
        from rewards.openai_judge import OpenAIJudge
        return OpenAIJudge
    if name == "LocalJudge":
        from rewards.local_judge import LocalJudge
        return LocalJudge
    raise AttributeError(name)
