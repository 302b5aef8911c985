"""Judge throughput against a loopback OpenAI-compatible server with artificial latency: concurrency 1 vs 64.

    python bench/bench_judge.py                                   # 200 ms latency, ~15 s
    python bench/bench_judge.py --latency 0.05 --calls 512 --concurrency 1,16,64,128

Each call grades one criterion (mode per_criterion) through the real `openai` client, so this measures our
semaphore + client + event loop, not a model. With latency L the ideal rate at concurrency c is c / L calls/s;
the target is ≥ 0.8 × 64 × (single-call rate) at c = 64. Prints a table; last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards import Criterion, Rubric  # noqa: E402
from rewards.judge import grade_sync  # noqa: E402
from rewards.openai_judge import OpenAIJudge  # noqa: E402

RUBRIC = Rubric([Criterion("Mentions possible heart attack", 5), Criterion("Advises calling emergency services", 10),
                 Criterion("Mentions aspirin", 3), Criterion("Suggests waiting for pain to pass", -8)])
QUESTION = [{"role": "user", "content": "I have crushing chest pain. What should I do?"}]


def server_stats(url: str, reset: bool = False) -> dict:
    with urllib.request.urlopen(url + "/stats" + ("?reset=1" if reset else "")) as r:
        return json.loads(r.read())


def run(url: str, concurrency: int, calls: int) -> dict:
    judge = OpenAIJudge("loopback-judge", base_url=url, api_key="bench", mode="per_criterion",
                        concurrency=concurrency, timeout=30, max_retries=0)
    n = -(-calls // len(RUBRIC))  # completions, each one call per criterion
    items = [(QUESTION, f"Could be a heart attack; call emergency services (case {concurrency}-{i}).", RUBRIC)
             for i in range(n)]
    server_stats(url, reset=True)
    t0 = time.perf_counter()
    verdicts = grade_sync(judge, items)
    dt = time.perf_counter() - t0
    done = sum(v is not None for row in verdicts for v in row)
    return {"concurrency": concurrency, "criteria": done, "seconds": dt, "criteria_per_s": done / dt,
            "max_in_flight": server_stats(url)["max_in_flight"], "errors": judge.stats()["judge/errors"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    ap.add_argument("--calls", type=int, default=640, help="criteria graded at each concurrency > 1")
    ap.add_argument("--single-calls", type=int, default=16, help="criteria graded at concurrency 1")
    ap.add_argument("--concurrency", default="1,64", help="comma list of concurrency limits")
    args = ap.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",")]
    # the server runs in its own process: in-process server threads would compete with the judge for the GIL
    proc = subprocess.Popen([sys.executable, "-m", "tests.loopback", "--latency", str(args.latency)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        rows = [run(url, c, args.single_calls if c == 1 else args.calls) for c in levels]
    finally:
        proc.terminate()
        proc.wait()
    base = next((r["criteria_per_s"] for r in rows if r["concurrency"] == 1), None)
    print(f"loopback judge, {args.latency * 1000:.0f} ms latency per request, one criterion per request")
    print(f"{'concurrency':>11}{'criteria':>10}{'seconds':>9}{'criteria/s':>12}{'ideal/s':>9}{'speedup':>9}{'max in flight':>15}")
    for r in rows:
        r["ideal_per_s"] = r["concurrency"] / args.latency if args.latency else float("nan")
        r["speedup"] = r["criteria_per_s"] / base if base else float("nan")
        print(f"{r['concurrency']:>11}{r['criteria']:>10}{r['seconds']:>9.2f}{r['criteria_per_s']:>12.1f}"
              f"{r['ideal_per_s']:>9.1f}{r['speedup']:>9.1f}{r['max_in_flight']:>15}")
    result = {"latency_s": args.latency, "rows": rows}
    if base and 64 in levels:
        r64 = next(r for r in rows if r["concurrency"] == 64)
        result["target_met"] = r64["criteria_per_s"] >= 0.8 * 64 * base
        print(f"target ≥ 0.8 × 64 × single-call rate = {0.8 * 64 * base:.1f}/s: "
              f"{'met' if result['target_met'] else 'NOT met'} ({r64['criteria_per_s']:.1f}/s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
