"""LLM judge over any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang, Groq, llama.cpp, ...).

    OPENAI_API_KEY=... torchrun grpo/train.py --judge openai --judge_model gpt-4.1-mini
    OPENAI_BASE_URL=http://localhost:8000/v1 torchrun grpo/train.py --judge openai --judge_model Qwen/Qwen3-32B

Transport faults (timeouts, connection resets, 408/409/429/5xx) are the openai client's job: its `timeout`,
`max_retries`, exponential backoff with jitter and Retry-After handling. On top we add only what the client cannot
know: a bounded re-ask when the reply is not the JSON we asked for, after which the verdict is unknown (None) —
never a silent False. Auth / missing-model errors raise at once: every later call would fail the same way.
The API key lives only inside the client (never in repr, stats, logs or the run config).
"""
from __future__ import annotations

import asyncio
import logging
import os

import openai

from rewards import judge_prompts as P
from rewards.judge_base import MODES, Judge
from rewards.judge_cache import VerdictCache
from rewards.rubric import Rubric

log = logging.getLogger(__name__)
# the grader model of simple-evals' HealthBench (its published scores); `grpo.evaluate --judge openai` defaults to it
HEALTHBENCH_GRADER = "gpt-4.1-2025-04-14"


class JudgeConfigError(RuntimeError):
    """The judge server refuses us for a reason retrying cannot fix (bad key, unknown model)."""


class OpenAIJudge(Judge):
    """Rubric verdicts from an LLM behind an OpenAI-compatible endpoint.

    mode="per_criterion": HealthBench's official grader in substance (simple-evals healthbench_eval.py): one call
    per rubric item with the whole conversation, JSON {"explanation", "criteria_met"}, re-asked until criteria_met is
    a boolean (at most `max_reasks` times, then unknown); the rules are in rewards/judge_prompts.py.
    mode="per_completion": one call per completion returning every criterion as JSON — a cheaper approximation
    (calls ÷ rubric size), not the official grader; bench/judge_agreement.py measures how far the two agree.
    `rate()` asks for one 1–10 rating (RaR implicit).
    base_url / api_key default to OPENAI_BASE_URL / OPENAI_API_KEY; a server given by URL without a key gets the
    placeholder "EMPTY" (vLLM's convention). At most `concurrency` requests are in flight, each with `timeout`
    seconds per attempt and `max_retries` client retries; a malformed reply is re-asked up to `max_reasks` times.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 mode: str = "per_completion", concurrency: int = 16, timeout: float = 60.0, max_retries: int = 5,
                 cache_path: str | None = None, max_reasks: int = 2, temperature: float = 0.0,
                 max_tokens: int | None = None, extra_body: dict | None = None):
        super().__init__()
        if not model:
            raise ValueError("the openai judge needs a model name: pass --judge_model (e.g. gpt-4.1-mini)")
        if mode not in MODES:
            raise ValueError(f"judge mode {mode!r} unknown; choose from {MODES}")
        if concurrency < 1:
            raise ValueError(f"judge concurrency must be >= 1, got {concurrency}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY") or (None if base_url is None else "EMPTY")
        if key is None:
            raise ValueError("the openai judge needs an API key: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        self.model, self.base_url, self.mode = model, base_url, mode
        self.concurrency, self.timeout, self.max_retries, self.max_reasks = concurrency, timeout, max_retries, max_reasks
        self.request = {"temperature": temperature, **({"max_tokens": max_tokens} if max_tokens else {}),
                        **({"extra_body": extra_body} if extra_body else {})}
        # the key is captured by this closure only, so vars(judge) / repr / pickles of the config never hold it
        self._new_client = lambda: openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout,
                                                      max_retries=max_retries)
        self.cache = VerdictCache(cache_path) if cache_path else None
        self._client = self._sem = None
        self._warned = False
        self.last_error = None  # "APITimeoutError: Request timed out." — named when a run stops on unknown rewards

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, mode={self.mode!r}, "
                f"concurrency={self.concurrency}, timeout={self.timeout}, max_retries={self.max_retries})")

    async def _open(self) -> None:
        # client and semaphore bind to the running loop; made per outermost call, so any loop can drive the judge
        self._client, self._sem = self._new_client(), asyncio.Semaphore(self.concurrency)

    async def _close(self) -> None:
        client, self._client, self._sem = self._client, None, None
        await client.close()

    async def _ask(self, messages: list[dict], parse):
        """One logical request: the parsed reply, or None after a transport failure or max_reasks bad replies."""
        async with self._sem:
            for attempt in range(1 + self.max_reasks):
                try:
                    resp = await self._client.chat.completions.create(model=self.model, messages=messages, **self.request)
                except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                    raise JudgeConfigError(f"judge server at {self.base_url or 'api.openai.com'} refused model "
                                           f"{self.model!r} ({type(e).__name__}, HTTP {e.status_code}): check "
                                           f"OPENAI_API_KEY / --judge_model / --judge_base_url") from None
                except openai.APIError as e:  # retries exhausted (timeouts, resets, 429, 5xx) or a 4xx: unknown
                    self._stats["errors"] += 1
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    if not self._warned:
                        self._warned = True
                        log.warning("judge request failed after retries (%s); its verdicts are unknown", type(e).__name__)
                    return None
                self._stats["calls"] += 1
                if resp.usage is not None:
                    self._stats["prompt_tokens"] += resp.usage.prompt_tokens or 0
                    self._stats["completion_tokens"] += resp.usage.completion_tokens or 0
                text = resp.choices[0].message.content if resp.choices else None
                parsed = parse(text)
                if parsed is not None:
                    return parsed
                if attempt < self.max_reasks:
                    self._stats["reasks"] += 1
                    messages = messages[:2] + [{"role": "assistant", "content": (text or "")[:4000]},
                                               {"role": "user", "content": P.REASK}]
        return None

    def _keys(self, question, completion, labels: list[str], mode: str) -> list[str]:
        return [VerdictCache.key(self.model, f"{P.PROMPT_VERSION}/{mode}", question, completion, label)
                for label in labels]

    async def _grade(self, question: list, completion: str, rubric: Rubric) -> list:
        labels = [f"({c.points:+g}) {c.text}" for c in rubric]
        keys = self._keys(question, completion, labels, self.mode)
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        verdicts = [bool(cached[k]) if k in cached else None for k in keys]
        self._stats["cache_hits"] += len(cached)
        todo = [i for i, k in enumerate(keys) if k not in cached]
        if not todo:
            return verdicts
        items = [(i + 1, rubric.criteria[i].points, rubric.criteria[i].text) for i in todo]  # ids are 1-based
        if self.mode == "per_criterion":
            answers = await asyncio.gather(*(self._ask(P.grading_messages(question, completion, [it], self.mode),
                                                       P.parse_criterion) for it in items))
            for i, met in zip(todo, answers):
                verdicts[i] = met
        else:
            ids = [it[0] for it in items]
            got = await self._ask(P.grading_messages(question, completion, items, self.mode),
                                  lambda text: P.parse_completion(text, ids))
            for i in todo:
                verdicts[i] = got[i + 1] if got else None
        if self.cache is not None:
            self.cache.put_many({keys[i]: float(verdicts[i]) for i in todo if verdicts[i] is not None})
        return verdicts

    async def _rate(self, question: list[dict], completion: str, rubric: Rubric) -> float | None:
        """1–10 Likert rating of the whole response against the rubric; None when the judge gives no valid one."""
        items = [(i + 1, c.points, c.text) for i, c in enumerate(rubric)]
        key = self._keys(question, completion, ["\n".join(f"({p:+g}) {t}" for _, p, t in items)], "rating")[0]
        cached = self.cache.get_many([key]) if self.cache is not None else {}
        if key in cached:
            self._stats["cache_hits"] += 1
            return cached[key]
        rating = await self._ask(P.grading_messages(question, completion, items, "rating"), P.parse_rating)
        if rating is None:
            self._stats["unknown"] += 1
        elif self.cache is not None:
            self.cache.put_many({key: rating})
        return rating
