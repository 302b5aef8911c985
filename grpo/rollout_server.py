"""Rollouts from a serving engine (vLLM; SGLang speaks the same completions API) over its OpenAI-compatible HTTP API.

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen3-14B --enable-lora --max-lora-rank 16 \
        --logprobs-mode processed_logprobs --port 8000                          # docs/serving.md: the full command
    torchrun grpo/train.py --preset qwen3-14b-rtx6000 --rollout server \
        --rollout_base_url http://127.0.0.1:8000/v1 --rollout_model Qwen/Qwen3-14B
    python -m pytest tests/test_rollout_server.py                               # against tests/vllm_server.py

`ServerEngine` implements the engine interface of grpo/rollout.py (`generate(...) -> Rollouts`, `after_update`), so
nothing downstream changes. What it sends, per prompt, one /v1/completions request:
  - the prompt as token ids, built exactly as the local engine builds them (chat template, left-truncated to
    max_prompt_len), so what is trained is what was sampled; `n` = G; temperature / top_p / top_k / min_p /
    max_tokens; the trainer's stop ids (`stop_token_ids`), so a completion ends where the local one would;
  - `logprobs=0` + `return_tokens_as_token_ids` (+ `return_token_ids` on vLLM >= 0.10.2): the sampled token ids and
    the engine's log-prob of each, stored as `Rollouts.sampler_logp` for the truncated importance-sampling
    correction and the `rollout/logp_gap` diagnostic (grpo/loss.py). Start vLLM with
    `--logprobs-mode processed_logprobs` so they are log-probs of the distribution it sampled from (after
    temperature and top-k/p), not of the raw logits;
  - `model` = the adapter just synced, so no stale weights are ever sampled;
  - `seed` = seed·2³² + the global index of the group's first sequence; vLLM seeds sample g of the request with
    seed + g, so every sequence's seed is a function of (seed, its global index), whatever the rank or batch layout.

Weight sync (LoRA only): `after_update(model, step)` saves the adapter with peft's save_pretrained (safetensors,
≈130 MB for Qwen3-14B r16) under adapter_dir, loads it with POST /v1/load_lora_adapter under the name
grpo-step<step>, then unloads the previous one (POST /v1/unload_lora_adapter). Full fine-tuning over HTTP would
mean shipping the whole model every step; it is refused with a one-line error.

Faults: timeouts, resets, 408/429/5xx are retried by the openai client (the judge's machinery: its max_retries,
exponential backoff, Retry-After). A reply that is not a well-formed completion (missing or out-of-vocab token ids,
log-probs that do not line up, wrong number of choices, an unknown finish reason) is re-asked up to max_reasks
times. Neither ever yields an empty completion: when retries run out the run stops with RolloutServerError naming
the server; nothing of that step was applied, so the last checkpoint is intact and `--resume auto` continues.

Multi-GPU: `base_url` may list several engines (comma-separated); rank r uses engine r mod n, and the first rank on
each engine syncs its adapter while the rest wait at a barrier. Guarantees: the local engines' batch-invariant
sampling (bit-exact --resume, 2 processes = 1) holds only for them. A served engine gets the same requests and
seeds on a resume, but its batching and kernels decide whether it answers with the same tokens — vLLM does not
promise that.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from pathlib import Path

import openai
import torch

from grpo import dist
from grpo.model import is_peft
from grpo.rollout import Rollouts, stop_token_ids
from rewards.openai_judge import OpenAIJudge

# the judge's retry budget, by import, so one setting governs every HTTP call the trainer makes
MAX_RETRIES = inspect.signature(OpenAIJudge.__init__).parameters["max_retries"].default
FULL_FT = ("--rollout server syncs LoRA adapters only (full fine-tuning over HTTP would ship the whole model every "
           "step): use --full_finetune=false, or --rollout eager")
FINISH = ("stop", "length")  # vLLM's finish reasons for a completed sequence; anything else ("abort") is a failure


class RolloutServerError(RuntimeError):
    """The serving engine could not give us rollouts; the message names the server and the fix."""


class MalformedReply(ValueError):
    """A completion reply we cannot train on (model output and server replies are untrusted input)."""


def request_seed(seed: int, row: int) -> int:
    """vLLM's per-request `seed` for the group whose first sequence has global index `row` (sample g gets seed + g)."""
    if not 0 <= seed < 2**31:
        raise ValueError(f"--seed must be in [0, 2**31) for a served engine, got {seed}")
    return seed * 2**32 + row


def parse_choice(choice, *, vocab: int, max_tokens: int) -> tuple[list[int], list[float], bool]:
    """(token ids, engine log-probs, truncated) from one vLLM completion choice; MalformedReply when unusable.

    Token ids come from `token_ids` (vLLM >= 0.10.2 with return_token_ids) or else from the logprobs' tokens,
    which return_tokens_as_token_ids writes as "token_id:<id>"."""
    if choice.finish_reason not in FINISH:
        raise MalformedReply(f"finish_reason {choice.finish_reason!r}")
    lp = choice.logprobs
    if lp is None or not lp.token_logprobs:
        raise MalformedReply("no log-probs (the request asks logprobs=0)")
    ids = getattr(choice, "token_ids", None)
    if ids is None:
        try:
            ids = [int(t.removeprefix("token_id:")) for t in lp.tokens or []]
        except (ValueError, AttributeError, TypeError):
            raise MalformedReply("tokens are not 'token_id:<id>' (return_tokens_as_token_ids)") from None
    logps = lp.token_logprobs
    if not 1 <= len(ids) <= max_tokens or len(logps) != len(ids):
        raise MalformedReply(f"{len(ids)} tokens, {len(logps)} log-probs, max_tokens {max_tokens}")
    if not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
        raise MalformedReply(f"token id outside the vocabulary [0, {vocab})")
    if not all(isinstance(x, (int, float)) and -1e4 <= x <= 1e-4 for x in logps):  # vLLM clamps -inf to -9999
        raise MalformedReply("log-prob missing or not in [-9999, 0]")
    return list(ids), [float(x) for x in logps], choice.finish_reason == "length"


class ServerEngine:
    """The engine interface over an OpenAI-compatible completions server with vLLM's runtime-LoRA endpoints.

    base_url: ".../v1" (several comma-separated: one per rank group); model: the served base model's name (its
    --served-model-name); api_key: the server's --api-key (default: VLLM_API_KEY, else none); adapter_dir: where adapters are saved, readable by the server (same host or a shared
    filesystem). timeout: seconds per generation request attempt (a G×max_tokens request takes long); max_retries:
    client retries; max_reasks: extra requests after a malformed reply; concurrency: requests in flight.
    """
    name = "server"

    def __init__(self, base_url: str, model: str, *, adapter_dir: str, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = MAX_RETRIES, max_reasks: int = 2, concurrency: int = 64,
                 keep_adapters: int = 2, rank: int | None = None):
        urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
        if not urls:
            raise ValueError("--rollout server needs --rollout_base_url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ValueError("--rollout server needs --rollout_model: the server's model name (GET /v1/models)")
        rank = (torch.distributed.get_rank() if torch.distributed.is_initialized() else 0) if rank is None else rank
        self.url, self.model = urls[rank % len(urls)], model
        self.syncs = rank < len(urls)  # the first rank on each engine saves and loads; the others wait
        self.adapter_dir, self.keep_adapters = Path(adapter_dir).resolve(), max(1, keep_adapters)
        self.timeout, self.max_retries = timeout, max_retries
        self.max_reasks, self.concurrency = max_reasks, concurrency
        key = api_key or os.environ.get("VLLM_API_KEY") or "EMPTY"  # "EMPTY": vLLM's convention without --api-key
        # the key is captured by this closure and the clients only: never in vars(engine), repr or the run config
        self._new_client = lambda: openai.AsyncOpenAI(api_key=key, base_url=self.url, timeout=timeout,
                                                      max_retries=max_retries)
        self._admin = openai.OpenAI(api_key=key, base_url=self.url, timeout=120.0, max_retries=max_retries)
        self.adapter: str | None = None  # the served adapter every request names
        self.version = 0  # adapters synced so far
        self.stats = {"rollout/requests": 0, "rollout/reasks": 0}
        self._saved: list[str] = []

    def __repr__(self) -> str:
        return f"ServerEngine(url={self.url!r}, model={self.model!r}, adapter={self.adapter!r})"

    def check(self) -> list[str]:
        """Before any model loads: the server answers and serves `model`. Returns the names it serves."""
        try:
            names = [m.id for m in self._admin.with_options(max_retries=1, timeout=10.0).models.list()]
        except openai.APIError as e:
            raise self._error("GET /models", e) from None
        if self.model not in names:
            raise RolloutServerError(f"rollout server {self.url} does not serve {self.model!r} (it serves {names}): "
                                     "pass one of those as --rollout_model (vllm serve --served-model-name)")
        return names

    # ---- the engine interface ----
    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: list, *, num_generations: int = 1, max_new_tokens: int = 256,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0,
                 seq_offset: int = 0, max_prompt_len: int | None = None, rollout_batch: int = 0) -> Rollouts:
        """G completions per prompt from the server, as the local engine returns them, plus `sampler_logp`
        (B*G, T). rollout_batch is the engine's business (its own scheduler): ignored."""
        if self.adapter is None:  # first call (or after a resume): serve the trainer's current weights
            self.after_update(model, 0)
        device, G = next(model.parameters()).device, num_generations
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        ids, pmask = enc["input_ids"], enc["attention_mask"]                     # (B, P)
        if max_prompt_len and ids.shape[1] > max_prompt_len:  # keep the end, as the local engine does
            ids, pmask = ids[:, -max_prompt_len:], pmask[:, -max_prompt_len:]
        stops = stop_token_ids(model, tokenizer).tolist()
        vocab = model.get_output_embeddings().weight.shape[0]
        body = dict(n=G, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, logprobs=0,
                    extra_body={"top_k": top_k if top_k > 0 else -1, "min_p": min_p, "stop_token_ids": stops,
                                "return_tokens_as_token_ids": True, "return_token_ids": True})
        jobs = [(ids[b][pmask[b].bool()].tolist(), request_seed(seed, seq_offset + b * G)) for b in range(len(texts))]
        groups = asyncio.run(self._generate_all(jobs, body, G, vocab, max_new_tokens))

        pad = tokenizer.pad_token_id
        rows = [c for group in groups for c in group]                             # B*G (ids, logps, truncated)
        T = max(len(r[0]) for r in rows)
        completion_ids = torch.tensor([r[0] + [pad] * (T - len(r[0])) for r in rows])           # (B*G, T)
        completion_mask = torch.tensor([[1] * len(r[0]) + [0] * (T - len(r[0])) for r in rows])  # (B*G, T)
        sampler_logp = torch.tensor([r[1] + [0.0] * (T - len(r[1])) for r in rows], dtype=torch.float32)
        decoded = tokenizer.batch_decode(completion_ids.masked_fill(completion_mask == 0, pad).tolist(),
                                         skip_special_tokens=True)
        roll = Rollouts(ids.repeat_interleave(G, 0).to(device), pmask.repeat_interleave(G, 0).to(device),
                        completion_ids.to(device), completion_mask.to(device), decoded,
                        torch.tensor([r[2] for r in rows], device=device), G)
        roll.sampler_logp = sampler_logp.to(device)  # (B*G, T); a field of Rollouts (grpo/rollout.py)
        return roll

    def after_update(self, model, step: int) -> None:
        """Serve the trainer's current adapter: save it, load it as grpo-step<step>, unload the previous one.
        Call on every rank after each optimizer step (and once after a resume); ranks meet at a barrier after it."""
        if not is_peft(model):
            raise RolloutServerError(FULL_FT)
        name = f"grpo-step{step}"
        if self.syncs:
            path = self.adapter_dir / name
            model.save_pretrained(str(path))  # adapter_config.json + adapter_model.safetensors (peft's default)
            self._load(name, path)
            if self.adapter not in (None, name):
                self._post("/unload_lora_adapter", {"lora_name": self.adapter}, missing_ok=True)
            self._saved = [s for s in self._saved if s != name] + [name]
            for old in self._saved[:-self.keep_adapters]:  # the server holds loaded adapters in its own memory
                shutil.rmtree(self.adapter_dir / old, ignore_errors=True)
            self._saved = self._saved[-self.keep_adapters:]
        dist.barrier()  # no rank asks for the new name before it is loaded
        self.adapter, self.version = name, self.version + 1

    # ---- HTTP ----
    def _load(self, name: str, path: Path) -> None:
        body = {"lora_name": name, "lora_path": str(path)}
        try:
            self._post("/load_lora_adapter", body)
        except openai.BadRequestError as e:  # the name survives from an earlier run on this server: reload it
            if "already been loaded" not in str(e):
                raise self._error("load_lora_adapter", e) from None
            self._post("/unload_lora_adapter", {"lora_name": name}, missing_ok=True)
            self._post("/load_lora_adapter", body)

    def _post(self, route: str, body: dict, missing_ok: bool = False) -> None:
        try:
            self._admin.post(route, body=body, cast_to=str)  # vLLM answers plain text "Success: ..."
        except openai.NotFoundError as e:
            if missing_ok and "cannot be found" in str(e):  # unloading an adapter the server no longer has
                return
            raise self._error(route.strip("/"), e) from None
        except openai.BadRequestError:
            raise
        except openai.APIError as e:
            raise self._error(route.strip("/"), e) from None

    def _error(self, what: str, e: Exception) -> RolloutServerError:
        status = getattr(e, "status_code", None)
        if what == "completions" and status == 404:
            hint = f"--rollout_model must be a name in {self.url}/models"
        elif what == "completions" and status == 400:
            hint = "check --max_new_tokens + --max_prompt_len against the server's --max-model-len"
        elif status == 404:
            hint = ("start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora, and let it read "
                    f"{self.adapter_dir} (same host or a shared filesystem)")
        elif what == "GET /models":
            hint = "is it up? Start it (docs/serving.md) or fix --rollout_base_url"
        elif status == 500 and "lora" in what:
            hint = "check the server log (is its --max-lora-rank >= --lora_r?)"
        else:
            hint = "is it still running? Restart it and continue with --resume auto (the last checkpoint is intact)"
        detail = f"HTTP {status}" if status else type(e).__name__
        return RolloutServerError(f"rollout server {self.url}: {what} failed ({detail}: {str(e)[:200]}): {hint}")

    async def _generate_all(self, jobs, body, G, vocab, max_tokens) -> list:
        client, sem = self._new_client(), asyncio.Semaphore(self.concurrency)
        try:
            return await asyncio.gather(*(self._one(client, sem, prompt, seed, body, G, vocab, max_tokens)
                                          for prompt, seed in jobs))
        finally:
            await client.close()

    async def _one(self, client, sem, prompt, seed, body, G, vocab, max_tokens) -> list:
        """One prompt's G completions; retries are the client's, re-asks ours; never an empty completion."""
        async with sem:
            for attempt in range(1 + self.max_reasks):
                self.stats["rollout/requests"] += 1
                try:
                    resp = await client.completions.create(model=self.adapter, prompt=prompt, seed=seed, **body)
                except (openai.BadRequestError, openai.NotFoundError, openai.AuthenticationError) as e:
                    raise self._error("completions", e) from None  # a request retrying cannot fix
                except openai.APIError as e:  # retries exhausted: timeouts, resets, 5xx
                    raise self._error(f"completions after {self.max_retries} retries", e) from None
                try:
                    if len(resp.choices) != G:
                        raise MalformedReply(f"{len(resp.choices)} choices for n={G}")
                    # vLLM numbers choices prompt-major (index = prompt·n + g); one prompt here, so index = g
                    return [parse_choice(c, vocab=vocab, max_tokens=max_tokens)
                            for c in sorted(resp.choices, key=lambda c: c.index)]
                except MalformedReply as e:
                    problem = e
                    if attempt < self.max_reasks:
                        self.stats["rollout/reasks"] += 1
        raise RolloutServerError(f"rollout server {self.url}: {1 + self.max_reasks} malformed completion replies "
                                 f"({problem}); check that it serves {self.model!r} with this tokenizer")
