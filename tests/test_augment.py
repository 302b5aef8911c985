"""data.augment against a loopback OpenAI-compatible server: traces, resume, failures, the concurrency bound."""
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from data import Sample
from data.augment import generate_traces, read_traces
from rewards.rubric import Criterion, Rubric


class Server:
    """/v1/chat/completions that answers "why: <question line>"; fails for questions containing FAIL."""

    def __init__(self):
        self.requests, self.in_flight, self.max_in_flight = [], 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                time.sleep(0.05)  # long enough for concurrent requests to overlap
                with outer.lock:
                    outer.in_flight -= 1
                prompt = body["messages"][0]["content"]
                question = prompt.split("Question:\n", 1)[1].split("\n", 1)[0]
                if "FAIL" in question:
                    self.send_response(500)
                    self.end_headers()
                    return
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": f"<SOLUTION>why: {question}"}}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def _samples(questions):
    rub = Rubric([Criterion("c", 1.0)])
    return [Sample(f"s{i}", [{"role": "user", "content": q}], rub, reference="ref") for i, q in enumerate(questions)]


def _run(server, samples, out, concurrency=3):
    client = openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=10)
    return asyncio.run(generate_traces(samples, client, "m", out, concurrency=concurrency, progress=False))


def test_traces_resume_and_concurrency(server, tmp_path):
    samples = _samples([f"question {i}" for i in range(8)])
    out = tmp_path / "traces.jsonl"
    traces, failed = _run(server, samples[:5], out)
    assert failed == 0 and traces == {f"s{i}": f"why: question {i}" for i in range(5)}  # tag stripped
    assert read_traces(out) == traces
    assert server.max_in_flight == 3  # 5 requests, at most 3 at once, and they did overlap
    server.requests.clear()
    traces, failed = _run(server, samples, out)  # resume: only the 3 new ones are asked for
    assert len(server.requests) == 3 and len(traces) == 8 and len(read_traces(out)) == 8
    assert "Reference answer:\nref" in server.requests[0]["messages"][0]["content"]


def test_failed_request_is_counted_and_retried_next_run(server, tmp_path):
    samples = _samples(["ok", "FAIL please", "fine"])
    out = tmp_path / "traces.jsonl"
    out.write_text('{"id": "s0", "reasoning": "cached"}\n{"id": "s2", "reas', encoding="utf-8")  # torn last line
    traces, failed = _run(server, samples, out)
    assert failed == 1 and traces == {"s0": "cached", "s2": "why: fine"}
    assert {r["messages"][0]["content"].split("Question:\n")[1].split("\n")[0] for r in server.requests} == \
        {"FAIL please", "fine"}
    assert read_traces(out) == traces
