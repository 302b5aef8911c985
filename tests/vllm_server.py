"""A loopback server speaking vLLM's completions and runtime-LoRA protocol, backed by the tiny model. A test fixture.

    python -m pytest tests/test_rollout_server.py

Protocol, as in vLLM's source (vllm/entrypoints/openai/completion/protocol.py and serving.py,
vllm/entrypoints/openai/models/serving.py, vllm/entrypoints/serve/lora/api_router.py):
  POST /v1/completions  prompt: list[int] | list[list[int]]; n; max_tokens; temperature; top_p; top_k (0 or -1 =
      off); min_p; seed (sample g of a request uses seed + g, vLLM's ParentRequest); logprobs (k ⇒ the sampled
      token's log-prob, clamped at -9999); return_tokens_as_token_ids (tokens as "token_id:<id>");
      return_token_ids (choice.token_ids, prompt_token_ids); stop_token_ids; skip_special_tokens. Choices are
      numbered prompt-major (index = prompt·n + g); finish_reason "stop" (EOS, or a stop_token_ids token, which is
      then the stop_reason; kept in the ids either way, vllm/v1/core/sched/utils.py check_stop) or "length".
  POST /v1/load_lora_adapter  {lora_name, lora_path, load_inplace?} → 200 text "Success: LoRA adapter '<n>' added
      successfully."; 400 if the name is loaded and not load_inplace; 404 when the adapter cannot be read.
  POST /v1/unload_lora_adapter  {lora_name, lora_int_id?} → 200 text; 404 "The lora adapter '<n>' cannot be found."
      Both exist only with VLLM_ALLOW_RUNTIME_LORA_UPDATING (else FastAPI's 404 {"detail": "Not Found"}).
  GET /v1/models  the base model and every loaded adapter (id, root, parent).
  Errors: {"error": {"message", "type", "param", "code"}} with the HTTP status.
Stricter than vLLM on purpose: an unknown request field is a 400 here (vLLM only logs it), so a misspelt field in
the client fails a test instead of being silently ignored.

Sampling is grpo.rollout.sample_tokens with the request seed read as (seed >> 32, seed & 0xffffffff) = (noise seed,
sequence id) — the client's seed·2³² + global index — so this server draws exactly the local engine's tokens.
Log-probs are "processed_logprobs": log-softmax of the filtered, temperature-scaled logits of an fp32 forward, so
they equal the trainer's up to float rounding when no filter is active. Adapters are read from disk with
peft.PeftModel.from_pretrained, as vLLM reads them (adapter_config.json + adapter_model.safetensors).

faults(route, key, attempt) -> name scripts replies: "500" | "reset" | "slow" | "truncated_body" as in
tests/loopback.py, plus "bad_tokens" (an id outside the vocabulary), "short" (one choice fewer than n),
"abort" (finish_reason "abort").
"""
from __future__ import annotations

import copy
import hashlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import torch

from grpo.rollout import filter_logits, sample_tokens
from tests.loopback import LoopbackHTTP

FIELDS = {  # vLLM CompletionRequest fields this server implements or accepts
    "model", "prompt", "n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "logprobs",
    "return_tokens_as_token_ids", "return_token_ids", "stop_token_ids", "skip_special_tokens", "stream", "echo",
    "stop", "user"}
MASK32 = 0xFFFFFFFF


class LoopbackVLLM(LoopbackHTTP):
    """ThreadingHTTPServer on 127.0.0.1; `url` is the base_url ('.../v1'). model, tokenizer: the base (fp32).

    Records: `requests` (completion bodies in arrival order, which for concurrent requests is a race), `served_by`
    (the model name each completion request sampled with), `loads` (adapter name, path) in order, `adapters`
    (name → loaded PeftModel), `attempts[key]` per logical request (key = route:hash), `served` fault counts.
    """

    def __init__(self, model, tokenizer, name: str = "tiny", *, runtime_lora: bool = True, faults=None,
                 slow_s: float = 2.0):
        self.base, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.runtime_lora, self.faults, self.slow_s = runtime_lora, faults or (lambda route, key, attempt: None), slow_s
        self.requests, self.served_by, self.loads = [], [], []
        self.adapters: dict[str, object] = {}
        self.attempts, self.served = Counter(), Counter()
        self._lock, self._gen_lock = threading.Lock(), threading.Lock()
        self._conns = set()
        self._listen(self._handler())

    def stop(self) -> None:
        """Stop as a dying engine does: no new connections, and the open keep-alive ones closed too."""
        super().stop()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- the engine ----
    def _model(self, name):
        return self.base if name in (None, self.name) else self.adapters.get(name)

    @torch.no_grad()
    def complete(self, body: dict) -> dict:
        """A CompletionResponse dict for a validated request body."""
        model = self._model(body.get("model"))
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        n, max_tokens = body.get("n", 1), body.get("max_tokens", 16)
        temperature = 1.0 if body.get("temperature") is None else body["temperature"]
        top_p = 1.0 if body.get("top_p") is None else body["top_p"]
        top_k = max(0, body.get("top_k") or 0)  # vLLM: 0 and -1 both mean off
        min_p = body.get("min_p") or 0.0
        seed = body.get("seed")
        seed = int(torch.randint(0, 2**62, ())) if seed is None else seed
        stops = torch.tensor(sorted(set(body.get("stop_token_ids") or []) | {self.tokenizer.eos_token_id}))
        pad = self.tokenizer.pad_token_id
        choices, n_prompt, n_gen = [], 0, 0
        for i, prompt in enumerate(prompts):
            # child g of request seed s samples with seed s + g; read as (noise seed, sequence id) = (hi, lo + g).
            # Every prompt of a multi-prompt request gets the same seed, as in vLLM.
            s = seed
            ids = torch.tensor([prompt] * n)                                      # (n, P)
            with self._gen_lock:
                out = sample_tokens(model, ids, torch.ones_like(ids), eos=stops, pad=pad, max_new_tokens=max_tokens,
                                    temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                    seed=s >> 32, seq_offset=s & MASK32)          # (n, T)
                seqs = []
                for row in out.tolist():
                    cut = next((t + 1 for t, tok in enumerate(row) if tok in stops.tolist()), len(row))
                    seqs.append(row[:cut])
                logps = [self._logprobs(model, prompt, seq, temperature, top_k, top_p, min_p) for seq in seqs]
            for g, (seq, lp) in enumerate(zip(seqs, logps)):
                stopped = seq[-1] in stops.tolist()  # vLLM's check_stop: EOS first, then stop_token_ids, then length
                reason = seq[-1] if stopped and seq[-1] != self.tokenizer.eos_token_id else None
                choices.append(self._choice(len(choices), prompt, seq, lp, "stop" if stopped else "length", reason,
                                            body))
                n_gen += len(seq)
            n_prompt += len(prompt)
        return {"id": "cmpl-loopback", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model") or self.name, "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen}}

    def _logprobs(self, model, prompt, seq, temperature, top_k, top_p, min_p) -> list[float]:
        """processed_logprobs: log p of each sampled token under the filtered, temperature-scaled distribution."""
        ids = torch.tensor([prompt + seq])                                        # (1, P+T)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()      # (T, V) predicts seq
        logp = filter_logits(logits, temperature=temperature or 1.0, top_k=top_k, top_p=top_p, min_p=min_p)
        return logp.gather(-1, torch.tensor(seq)[:, None]).squeeze(-1).clamp(min=-9999.0).tolist()

    def _choice(self, index, prompt, seq, lp, finish, stop_reason, body) -> dict:
        tok = self.tokenizer
        skip = body.get("skip_special_tokens", True)
        logprobs = None
        if body.get("logprobs") is not None:
            names = ([f"token_id:{t}" for t in seq] if body.get("return_tokens_as_token_ids")
                     else [tok.decode([t]) for t in seq])
            offsets = [sum(len(x) for x in names[:k]) for k in range(len(names))]
            logprobs = {"text_offset": offsets, "token_logprobs": lp, "tokens": names,
                        "top_logprobs": [{name: v} for name, v in zip(names, lp)]}
        ids_back = body.get("return_token_ids")
        return {"index": index, "text": tok.decode(seq, skip_special_tokens=skip), "logprobs": logprobs,
                "finish_reason": finish, "stop_reason": stop_reason, "prompt_logprobs": None,
                "token_ids": seq if ids_back else None, "prompt_token_ids": prompt if ids_back else None}

    def load(self, body: dict) -> tuple[int, object]:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.adapters and not body.get("load_inplace"):
            return _error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                               "in place, set 'load_inplace' to True.", "InvalidUserInput")
        from peft import PeftModel
        try:
            model = PeftModel.from_pretrained(copy.deepcopy(self.base), path).eval()
        except (OSError, ValueError) as e:
            return _error(404, f"Loading lora {name} failed: No adapter found for {path} ({type(e).__name__})",
                          "NotFoundError")
        with self._lock:
            self.adapters[name] = model
            self.loads.append((name, path))
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict) -> tuple[int, object]:
        name = body.get("lora_name")
        if not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        with self._lock:
            if name not in self.adapters:
                return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del self.adapters[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def check(self, body: dict) -> tuple[int, object] | None:
        """vLLM's request validation, the part a client can get wrong."""
        unknown = set(body) - FIELDS
        if unknown:
            return _error(400, f"unknown fields {sorted(unknown)} (this loopback is strict)", "BadRequestError")
        prompt = body.get("prompt")
        flat = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else None
        nested = (prompt if isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt)
                  else None)
        if flat is None and nested is None:
            return _error(400, "this loopback takes token-id prompts only (list[int] | list[list[int]])",
                          "BadRequestError", "prompt")
        vocab = self.base.get_output_embeddings().weight.shape[0]
        if not all(isinstance(t, int) and 0 <= t < vocab for p in (nested or [flat]) for t in p):
            return _error(400, "prompt token id out of range", "BadRequestError", "prompt")
        if body.get("stream"):
            return _error(400, "stream is not implemented by this loopback", "BadRequestError", "stream")
        if self._model(body.get("model")) is None:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model")
        return None

    # ---- HTTP ----
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                server._conns.add(self.connection)

            def finish(self):
                server._conns.discard(self.connection)
                super().finish()

            def _send(self, status: int, body, cut: bool = False):
                is_text = isinstance(body, str)  # vLLM's LoRA routes answer plain text
                data = body.encode() if is_text else json.dumps(body).encode()
                self.send_response(status)
                if not is_text:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 500:
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.close_connection = True

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {"detail": "Not Found"})
                cards = [{"id": server.name, "object": "model", "created": 0, "owned_by": "vllm", "root": server.name,
                          "parent": None}]
                cards += [{"id": n, "object": "model", "created": 0, "owned_by": "vllm", "root": p,
                           "parent": server.name} for n, p in server.loads if n in server.adapters]
                self._send(200, {"object": "list", "data": cards})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, _error(400, "invalid JSON", "BadRequestError")[1])
                route = self.path.rstrip("/")
                if route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and not server.runtime_lora:
                    return self._send(404, {"detail": "Not Found"})
                key = route + ":" + hashlib.sha256(json.dumps([body.get("prompt"), body.get("seed"),
                                                               body.get("lora_name")]).encode()).hexdigest()
                with server._lock:
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                fault = server.faults(route, key, attempt) or "ok"
                with server._lock:
                    server.served[fault] += 1
                try:
                    self._reply(route, body, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow reply

            def _reply(self, route, body, fault):
                if fault == "reset":  # RST: the client sees a connection reset mid-request
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "500":
                    return self._send(*_error(500, "boom", "InternalServerError"))
                if fault == "slow":
                    time.sleep(server.slow_s)
                if route == "/v1/load_lora_adapter":
                    return self._send(*server.load(body))
                if route == "/v1/unload_lora_adapter":
                    return self._send(*server.unload(body))
                if route != "/v1/completions":
                    return self._send(404, {"detail": "Not Found"})
                bad = server.check(body)
                if bad:
                    return self._send(*bad)
                with server._lock:
                    server.requests.append(body)
                reply = server.complete(body)
                with server._lock:
                    server.served_by.append(body.get("model"))
                if fault == "bad_tokens":
                    reply["choices"][0]["token_ids"][0] = 10**9
                    if reply["choices"][0]["logprobs"]:
                        reply["choices"][0]["logprobs"]["tokens"][0] = f"token_id:{10**9}"
                elif fault == "short":
                    reply["choices"] = reply["choices"][:-1]
                elif fault == "abort":
                    reply["choices"][0]["finish_reason"] = "abort"
                self._send(200, reply, cut=fault == "truncated_body")

        return Handler


def _error(status: int, message: str, kind: str, param: str | None = None) -> tuple[int, dict]:
    """vLLM's ErrorResponse body."""
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}
