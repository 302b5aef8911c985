"""A loopback OpenAI-compatible chat-completions server that grades like the keyword judge, with scripted faults.

    python -m tests.loopback --latency 0.2          # serve in the foreground; prints the base URL

Used by tests/test_judge.py (fault tests through the real `openai` client) and bench/bench_judge.py (throughput).
It reads the judge's own prompt format (rewards/judge_prompts.py): finds the response between the nonce markers,
the rubric items after them, and answers each item with rewards.judge.keyword_verdict (or the `verdicts` function
it is given: bench/judge_agreement.py passes a simulated noisy grader) — so every correct verdict is known in
advance. Per-criterion replies come in a ```json fence, as HealthBench's grader is told to answer. A chat without
the markers (a policy evaluated over the API, `grpo.evaluate --api-model`) gets a fixed answer, POLICY_REPLY. A request's identity is its system + user message, so a re-ask (the same two messages plus
the bad reply and a correction) counts as another attempt of the same logical request.

faults(key, attempt) -> name picks the reply for each attempt (None / "ok" = a correct answer):
  "slow" sleep `slow_s` then answer (past the client's timeout) | "429" with Retry-After: `retry_after` seconds |
  "500" with retry-after-ms: 10 | "500_backoff" without Retry-After (client's exponential backoff) |
  "401" auth error | "reset" TCP reset, no reply | "truncated_body" half of the HTTP body, then close |
  "bad_json" truncated JSON content | "wrong_schema" valid JSON of the wrong shape | "prose" no JSON at all
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rewards.judge import keyword_verdict

_BLOCK = re.compile(r"<<<RESPONSE ([0-9a-f]{16})>>>\n(.*?)\n<<<END RESPONSE \1>>>\n", re.DOTALL)
_ITEM = re.compile(r"^\[(\d+)\] \(([+-][0-9.e+-]+) points\) (.*)$", re.MULTILINE)


POLICY_REPLY = ("<start_working_out>Chest pain can be a heart attack.<end_working_out><SOLUTION>Call emergency "
                "services now; chew an aspirin if you are not allergic. You should seek care today.</SOLUTION>")


def keyword_verdicts(completion: str, items: list[tuple], mode: str) -> dict[int, bool]:
    """The default grader of the loopback server: {item id: keyword_verdict}, the same in every mode."""
    return {i: bool(keyword_verdict(t, completion)) for i, _, t in items}


def grade_reply(messages: list[dict], verdicts=keyword_verdicts) -> tuple[str, str]:
    """(the correct reply text, the graded completion) for a judge prompt, by `verdicts(completion, items, mode)`
    with items = [(id, points, text)] and mode per_criterion | per_completion | rating. A chat that is not a judge
    prompt (a policy being evaluated through this server) gets POLICY_REPLY."""
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    system = messages[0].get("content", "") if messages and messages[0].get("role") == "system" else ""
    block = _BLOCK.search(user)
    if block is None:
        return POLICY_REPLY, ""
    completion = block.group(2)
    items = [(int(i), float(p), t) for i, p, t in _ITEM.findall(user[block.end():])]
    mode = "rating" if '"rating"' in system else "per_completion" if '"criteria"' in system else "per_criterion"
    met = verdicts(completion, items, mode)
    if mode == "rating":
        pos = [i for i, p, _ in items if p > 0]
        frac = sum(met[i] for i in pos) / len(pos) if pos else 1.0
        return json.dumps({"explanation": "keyword rating", "rating": 1 + round(9 * frac)}), completion
    if mode == "per_completion":
        rows = [{"id": i, "explanation": "keywords", "criteria_met": met[i]} for i, _, _ in items]
        return json.dumps({"criteria": rows}), completion
    # per criterion: fenced, as simple-evals' grader is told to reply ("the json object in markdown format")
    reply = {"explanation": "keywords", "criteria_met": met[items[0][0]] if items else False}
    return "```json\n" + json.dumps(reply, indent=2) + "\n```", completion


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog (5) drops connects when 64 clients open at once


class LoopbackHTTP:
    """A threaded HTTP server on a free loopback port in a daemon thread, `url` = its /v1 base; `with` starts and
    stops it. The loopback judge here and tests/vllm_server.py's engine are both one."""

    def _listen(self, handler) -> None:
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class LoopbackJudgeServer(LoopbackHTTP):
    """ThreadingHTTPServer on 127.0.0.1 (a free port); `url` is the base_url to hand the openai client.

    Records: `attempts[key]` requests per logical request, `answered[key]` correct answers sent, `faults` served,
    `max_in_flight`, `completions` (graded completion texts, in arrival order), `auth` (Authorization headers seen),
    `models` (model names asked for).
    """

    def __init__(self, latency: float = 0.0, faults=None, slow_s: float = 1.0, retry_after: float = 0.05,
                 verdicts=keyword_verdicts, answer=None):
        # answer(messages) -> (reply text, graded text): another task's replies (e.g. the heart classifier's)
        self.answer = answer or (lambda messages: grade_reply(messages, self.verdicts))
        self.latency, self.faults, self.slow_s, self.retry_after = latency, faults or (lambda key, attempt: None), slow_s, retry_after
        self.verdicts = verdicts  # (completion, [(id, points, text)], mode) -> {id: bool}: the simulated grader
        self.attempts, self.answered, self.served = Counter(), Counter(), Counter()
        self.arrivals: dict[str, list[float]] = {}
        self.completions, self.auth, self.models = [], set(), set()
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._listen(self._handler())

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server
            disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle + delayed ACK adds 40 ms

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None, cut: bool = False):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.close_connection = True

            def do_GET(self):  # /stats: counters for a server running in another process (the bench)
                with server._lock:
                    stats = {"requests": sum(server.attempts.values()), "max_in_flight": server.max_in_flight,
                             "served": dict(server.served)}
                    if self.path.endswith("reset=1"):
                        server.max_in_flight = 0
                self._send(200, stats)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                messages = body.get("messages", [])
                key = hashlib.sha256(json.dumps(messages[:2]).encode()).hexdigest()
                with server._lock:
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                    server.arrivals.setdefault(key, []).append(time.monotonic())
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.models.add(body.get("model", ""))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._reply(key, attempt, messages, body.get("model", ""))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow reply
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _reply(self, key, attempt, messages, model):
                fault = server.faults(key, attempt) or "ok"
                if server.latency:
                    time.sleep(server.latency)
                with server._lock:
                    server.served[fault] += 1
                if fault == "reset":  # RST instead of FIN: the client sees a connection reset mid-request
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                      {"Retry-After": f"{server.retry_after:g}"})
                if fault == "401":
                    return self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                if fault in ("500", "500_backoff"):
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}},
                                      {"retry-after-ms": "10"} if fault == "500" else {})
                text, completion = server.answer(messages)
                if fault == "slow":
                    time.sleep(server.slow_s)
                elif fault == "bad_json":
                    text = text[: max(1, len(text) // 2)]
                elif fault == "wrong_schema":
                    text = json.dumps({"met": "yes", "criteria": "all"})
                elif fault == "prose":
                    text = "The response meets the criteria."
                reply = {"id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": sum(len(m.get("content", "")) for m in messages) // 4,
                                   "completion_tokens": len(text) // 4,
                                   "total_tokens": sum(len(m.get("content", "")) for m in messages) // 4 + len(text) // 4}}
                self._send(200, reply, cut=fault == "truncated_body")
                if fault == "ok":
                    with server._lock:
                        server.answered[key] += 1
                        server.completions.append(completion)

        return Handler


def main() -> None:
    """Serve in the foreground (the bench runs it in its own process, so server threads do not compete with the
    judge for the GIL); prints the base URL on the first line."""
    import argparse
    ap = argparse.ArgumentParser(description="loopback OpenAI-compatible judge server")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    args = ap.parse_args()
    server = LoopbackJudgeServer(latency=args.latency)
    print(server.url, flush=True)
    server._httpd.serve_forever(0.05)


if __name__ == "__main__":
    main()
