"""Reasoning traces for the SFT targets, from any OpenAI-compatible chat model (cached, resumable, concurrent).

    python -m data.augment runs/data/sft.jsonl --out runs/data/traces.jsonl --model gpt-4o-mini \
        [--base-url http://localhost:8000/v1] [--concurrency 16]

For each sample with a reference answer the model writes the clinical reasoning that leads from the question to that
answer. Each trace is appended to --out as {"id", "reasoning"} the moment it arrives (the file `grpo/sft.py
--reasoning` reads), so an interrupted run resumes where it stopped and a finished one costs nothing to rerun.
Timeouts and retries are the openai client's own; a request that still fails is counted and left for the next run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from data.format import TAGS

PROMPT = (
    "Below is a medical question and a reference answer written by an expert. Write the step-by-step clinical "
    "reasoning that leads from the question to that answer: the key findings, what they suggest, what is ruled out "
    "and why. Write it as your own thinking before answering; do not copy the answer verbatim and do not add a "
    "final answer section.\n\nQuestion:\n{question}\n\nReference answer:\n{answer}"
)


def read_traces(path) -> dict[str, str]:
    """{id: reasoning} from a traces JSONL; a torn last line (interrupted write) is ignored."""
    traces = {}
    path = Path(path)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str) and isinstance(rec.get("reasoning"), str):
                traces[rec["id"]] = rec["reasoning"]
    return traces


def clean(text: str) -> str:
    """The model's trace with our format tags removed, so it cannot break `format_target`."""
    for tag in TAGS:
        text = text.replace(tag, "")
    return text.strip()


async def generate_traces(samples, client, model: str, out, *, concurrency: int = 8, max_tokens: int = 1024,
                          temperature: float = 0.7, progress: bool = True) -> tuple[dict[str, str], int]:
    """Traces for every sample with a reference (those already in `out` are reused). Returns ({id: reasoning},
    number of failed requests). `client` is an openai.AsyncOpenAI (or anything with its chat.completions.create)."""
    out = Path(out)
    traces = read_traces(out)
    todo = [s for s in samples if s.reference and s.id not in traces]
    sem = asyncio.Semaphore(concurrency)
    failed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    torn = out.is_file() and out.stat().st_size > 0 and not out.read_bytes().endswith(b"\n")
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="traces", disable=not progress) as bar:
        async def one(s):
            nonlocal failed
            question = "\n\n".join(f"{m['role']}: {m['content']}" for m in s.prompt) if len(s.prompt) > 1 \
                else s.prompt[0]["content"]
            async with sem:
                try:
                    resp = await client.chat.completions.create(
                        model=model, max_tokens=max_tokens, temperature=temperature,
                        messages=[{"role": "user", "content": PROMPT.format(question=question, answer=s.reference)}])
                    text = clean(resp.choices[0].message.content or "")
                except Exception as e:  # the client already retried; a bad reply is not worth crashing the run over
                    failed += 1
                    tqdm.write(f"{s.id}: {type(e).__name__}: {str(e)[:120]}")
                    text = ""
            if text:
                traces[s.id] = text
                f.write(json.dumps({"id": s.id, "reasoning": text}, ensure_ascii=False) + "\n")
                f.flush()  # one line per trace on disk before the next: what makes the run resumable
            bar.update(1)

        if torn:
            f.write("\n")  # close an interrupted run's torn line, so the next trace starts on a line of its own
        await asyncio.gather(*(one(s) for s in todo))
    return traces, failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="reasoning traces for SFT targets from an OpenAI-compatible model")
    ap.add_argument("samples", help="samples with reference answers (any format data.load_samples reads)")
    ap.add_argument("--out", required=True, help="traces JSONL (appended; resumes)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: the openai client's)")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request (openai client)")
    ap.add_argument("--max-retries", type=int, default=3, help="retries per request (openai client)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=None, help="only the first N samples")
    args = ap.parse_args(argv)

    import openai

    from data.loaders import load_samples
    samples = load_samples(args.samples)[: args.limit]
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=os.environ.get(args.api_key_env, "none"),
                                timeout=args.timeout, max_retries=args.max_retries)
    traces, failed = asyncio.run(generate_traces(samples, client, args.model, args.out,
                                                 concurrency=args.concurrency, max_tokens=args.max_tokens))
    have = sum(s.id in traces for s in samples)
    print(f"{have}/{len(samples)} samples have a trace in {args.out}; {failed} requests failed (rerun to retry)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
