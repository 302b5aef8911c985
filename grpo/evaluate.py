"""Evaluate a policy (or any OpenAI-compatible model) on rubric-graded questions, with an LLM judge per criterion.

    python -m grpo.evaluate --limit 3 --max-new-tokens 64 --out runs/eval-demo     # tiny model, keyword judge (CPU)
    python -m grpo.evaluate --limit 3 --max-new-tokens 64 --judge local --out runs/eval-local  # policy grades itself
    python -m grpo.evaluate --preset paper --data healthbench.jsonl --model Qwen/Qwen3-14B \
        --judge openai --out runs/eval-base
    python -m grpo.evaluate --preset paper --data healthbench.jsonl --model Qwen/Qwen3-14B \
        --adapter runs/grpo/adapter --judge openai --out runs/eval-hybrid
    python -m grpo.evaluate --preset paper --data healthbench.jsonl --api-model gpt-oss-120b \
        --api-base-url http://localhost:8000/v1 --judge openai --out runs/eval-oss
    python -m grpo.evaluate --preset paper --data healthbench.jsonl --model Qwen/Qwen3-14B \
        --judge local --judge-model Qwen/Qwen3-32B --out runs/eval-local32
    python -m grpo.evaluate --compare runs/eval-base runs/eval-hybrid --out runs/compare   # McNemar + plot

One response per example; every rubric criterion graded by the judge. `--judge openai` is HealthBench's official
grader in substance (simple-evals healthbench_eval.py): one call per rubric item (`--judge-mode per_criterion`, the
default) with grader model gpt-4.1-2025-04-14 unless `--judge-model` says otherwise; `--judge-mode per_completion`
(one call per response) is a cheaper approximation, not the official grade. `--judge local` loads `--judge-model`
with grpo.model.load_model, or without it grades with the policy's own weights (LoRA adapter off). The judge's
server and key come from OPENAI_BASE_URL / OPENAI_API_KEY, or `--judge-base-url`.
Writes OUT/results.jsonl (one line per example, every verdict kept; a rerun resumes after the last finished
example), OUT/summary.json, OUT/summary.md and PNG plots. Headline: the HealthBench score and the pass rate;
`paper_heuristic` (the paper's released keyword evaluator: accuracy and F1 = 2A/(1+A)) is reported beside them,
labelled, only so a run can sit next to the paper's table. `--preset paper` is the paper's evaluation set: the
heart-related subset of HealthBench (lexicon filter), n = 500 drawn with seed 0. Statistics: grpo/eval_stats.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import sys
from pathlib import Path

from tqdm import tqdm

from data import is_heart, load_samples, resolve_data_path
from data.format import parse, to_messages
from grpo import eval_stats as S
from grpo.config import EvalConfig, cli, parse_args


def select(samples, *, heart_only: bool = False, n: int | None = None, seed: int = 0) -> list:
    """The evaluation set: optionally only heart-related samples, then `n` of them drawn with `seed`, in file order."""
    if heart_only:
        samples = [s for s in samples if is_heart(s)]
    if n is not None and n < len(samples):
        keep = set(random.Random(seed).sample(range(len(samples)), n))
        samples = [s for i, s in enumerate(samples) if i in keep]
    return samples


class PolicyResponder:
    """Responses from a local HF model (± LoRA adapter) through the training loop's own rollout engine (`engine`:
    a grpo.rollout.ENGINES name; the static-cache one by default). Row i of the evaluation set is sampled with noise
    keyed by (seed, i), so a resumed run writes the same text, and the batch it was decoded in does not matter."""

    def __init__(self, model_path: str, *, adapter=None, max_new_tokens=512, temperature=0.0, seed=0,
                 engine="local"):
        from grpo.model import load_model
        from grpo.rollout import make_engine
        self.model, self.tok = load_model(model_path, adapter=adapter)
        self.engine = make_engine(engine)
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    async def __call__(self, samples, offsets) -> list[tuple[str, bool]]:
        out = []
        for run in consecutive_runs(list(offsets)):  # one decode per run: seq_offset keys row r as run[0] + r
            r = self.engine.generate(self.model, self.tok, [to_messages(samples[j]) for j in run],
                                     seq_offset=offsets[run[0]], **self.kw)
            out += [(text, bool(cut)) for text, cut in zip(r.texts, r.truncated.tolist())]
        return out


def consecutive_runs(offsets: list) -> list:
    """Positions of `offsets` grouped into runs of consecutive values: [3, 4, 5, 9, 10] → [[0, 1, 2], [3, 4]].
    A resumed evaluation skips the rows already written, so a batch's offsets can have gaps."""
    runs = []
    for j, o in enumerate(offsets):
        if runs and offsets[runs[-1][-1]] + 1 == o:
            runs[-1].append(j)
        else:
            runs.append([j])
    return runs


class ApiResponder:
    """Responses from an OpenAI-compatible chat endpoint (baseline rows such as GPT-OSS-120B)."""

    def __init__(self, model: str, *, base_url=None, api_key_env="OPENAI_API_KEY", max_new_tokens=2048,
                 temperature=0.0, concurrency=8, timeout=300.0, max_retries=3, client=None):
        import openai
        self.client = client or openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get(api_key_env, "none"),
                                                   timeout=timeout, max_retries=max_retries)
        self.model, self.max_tokens, self.temperature = model, max_new_tokens, temperature
        self.sem = asyncio.Semaphore(concurrency)

    async def _one(self, s) -> tuple[str, bool]:
        async with self.sem:
            try:
                r = await self.client.chat.completions.create(model=self.model, messages=to_messages(s),
                                                              max_tokens=self.max_tokens, temperature=self.temperature)
            except Exception as e:  # the client already retried: no record, so a rerun (resume) asks again
                tqdm.write(f"{s.id}: no response ({type(e).__name__}: {str(e)[:120]}); rerun to retry it")
                return None
            return r.choices[0].message.content or "", r.choices[0].finish_reason == "length"

    async def __call__(self, samples, offsets):
        return await asyncio.gather(*(self._one(s) for s in samples))


def read_results(path) -> list[dict]:
    """Finished examples of a results.jsonl; a torn last line (interrupted run) is dropped."""
    out = []
    path = Path(path)
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


async def run(samples, responder, judge, out_dir, *, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Respond, judge and append one record per example to out_dir/results.jsonl, skipping examples already there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.jsonl"
    done = {r["id"]: r for r in read_results(path)}
    todo = [(i, s) for i, s in enumerate(samples) if s.id not in done]
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")  # close the torn line so the next record starts on its own
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(samples), initial=len(samples) - len(todo),
                                                      desc="evaluate", disable=not progress) as bar:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            responses = await responder([s for _, s in batch], [i for i, _ in batch])
            batch, responses = ([x for x, r in zip(batch, responses) if r is not None],
                                [r for r in responses if r is not None])  # a failed API call is retried on resume
            parsed = [parse(text) for text, _ in responses]
            # the judge sees the conversation as the user wrote it (not our system prompt) and grades the answer
            verdicts = await judge.grade_many([(s.prompt, p.solution, s.rubric) for (_, s), p in zip(batch, parsed)])
            for (_, s), (text, truncated), p, met in zip(batch, responses, parsed, verdicts):
                points = [c.points for c in s.rubric]
                if not isinstance(met, (list, tuple)) or len(met) != len(points):
                    met = [None] * len(points)  # a judge reply we cannot align is unknown, not a crash
                met = [m if m in (True, False) else None for m in met]
                rec = {"id": s.id, "tags": list(s.tags), "response": text, "reasoning": p.reasoning,
                       "solution": p.solution, "well_formed": p.well_formed, "truncated": truncated,
                       "criteria": [c.text for c in s.rubric], "points": points,
                       "criterion_tags": [list(c.tags) for c in s.rubric], "verdicts": met,
                       "score": S.example_score(points, met)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[s.id] = rec
            f.flush()
            bar.update(len(batch))
    return [done[s.id] for s in samples if s.id in done]


def summarize(records: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every reported number, with 95 % bootstrap intervals over examples."""
    examples = [(r["points"], r["verdicts"], [tuple(t) for t in r["criterion_tags"]]) for r in records]
    scores = [r["score"] for r in records]
    passed = [float(s > 0.5) for s in scores if s is not None]
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    crit = S.criterion_metrics(examples)
    crit_ci = {k: S.bootstrap(examples, lambda ex, k=k: S.criterion_metrics(ex)[k], n=n_boot, seed=seed)
               for k in ("accuracy", "precision", "recall", "f1")}
    verdicts = [m for r in records for m in r["verdicts"]]
    answered = [(r.get("solution") or "", len(r["points"])) for r in records]
    heur = {k: S.bootstrap(answered, lambda ex, k=k: S.paper_heuristic(*zip(*ex))[k], n=n_boot, seed=seed)
            for k in ("accuracy", "f1")} if answered else {}
    return {
        "n": len(records),
        "healthbench_score": S.bootstrap(scores, n=n_boot, seed=seed),
        "pass_rate": S.bootstrap(passed, mean, n=n_boot, seed=seed),
        "criteria": {k: dict(crit_ci[k], value=crit[k]) for k in crit_ci} | {k: crit[k] for k in ("tp", "fp", "fn", "tn")},
        "paper_heuristic": {"note": HEURISTIC_NOTE, **heur},
        "format_compliance": mean([float(r["well_formed"]) for r in records]),
        "truncated": mean([float(r["truncated"]) for r in records]),
        "unknown_verdicts": mean([float(m is None) for m in verdicts]),
        "axis": S.tag_scores(examples, "axis:"),
        "theme": S.group_scores(scores, [r["tags"] for r in records], "theme:"),
        "heart_theme": S.group_scores(scores, [r["tags"] for r in records], "heart:"),
    }


HEURISTIC_NOTE = ("keyword heuristic of the paper's released evaluator (first 5 items; half credit for answers over "
                  "100 characters with should/recommend/important/seek/care; all-positive labels): not a grade")


def _ci(d: dict) -> str:
    return f"{d['value']:.3f} | [{d['lo']:.3f}, {d['hi']:.3f}]"


def markdown(summary: dict, title: str) -> str:
    lines = [f"# {title}", "", f"n = {summary['n']} examples"
             + (f", graded by {summary['grader']}" if summary.get("grader") else ""), "", "| metric | value | 95% CI |", "|---|---|---|",
             f"| HealthBench score (bootstrap std {summary['healthbench_score']['std']:.3f}) | "
             f"{_ci(summary['healthbench_score'])} |", f"| pass rate (score > 0.5) | {_ci(summary['pass_rate'])} |"]
    lines += [f"| criterion {k} | {_ci(summary['criteria'][k])} |" for k in ("accuracy", "precision", "recall", "f1")]
    lines += [f"| format compliance | {summary['format_compliance']:.3f} | |",
              f"| truncated | {summary['truncated']:.3f} | |", f"| unknown verdicts | {summary['unknown_verdicts']:.3f} | |"]
    heur = summary.get("paper_heuristic", {})
    if "accuracy" in heur:
        lines += ["", "Paper heuristic, for comparison with the paper's table only (" + heur["note"] + "):", "",
                  "| paper_heuristic | value | 95% CI |", "|---|---|---|",
                  f"| accuracy | {_ci(heur['accuracy'])} |", f"| F1 = 2A/(1+A) | {_ci(heur['f1'])} |"]
    if summary["axis"]:
        lines += ["", "| axis | score |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in summary["axis"].items()]
    for key, name in (("heart_theme", "heart theme"), ("theme", "theme")):
        if summary[key]:
            lines += ["", f"| {name} | n | score |", "|---|---|---|"]
            lines += [f"| {k} | {v['n']} | {v['score']:.3f} |" for k, v in summary[key].items()]
    return "\n".join(lines) + "\n"


def plot_run(records: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([r["score"] for r in records if r["score"] is not None], bins=20, range=(-1, 1), color="tab:blue")
    ax.axvline(0.5, color="k", ls="--", lw=1, label="pass threshold")
    ax.set(xlabel="per-example score (Σ met points / Σ positive points)", ylabel="examples", title="score distribution")
    ax.legend()
    fig.tight_layout(), fig.savefig(out_dir / "scores.png", dpi=120), plt.close(fig)
    paths.append(out_dir / "scores.png")
    groups = summary["heart_theme"] or summary["theme"]
    if groups:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(groups) + 1.2))
        names = list(groups)
        ax.barh(names, [groups[k]["score"] for k in names], color="tab:red")
        ax.set(xlim=(0, 1), xlabel="HealthBench score", title="per theme")
        for y, k in enumerate(names):
            ax.text(0.01, y, f"n={groups[k]['n']}", va="center", fontsize=8)
        fig.tight_layout(), fig.savefig(out_dir / "themes.png", dpi=120), plt.close(fig)
        paths.append(out_dir / "themes.png")
    return paths


def compare(runs: list[str], out_dir) -> dict:
    """Paired comparison of result files on their common examples: scores with CIs and exact McNemar on pass/fail
    of each run against the first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for run_path in runs:
        p = Path(run_path)
        results[run_path] = {r["id"]: r for r in read_results(p / "results.jsonl" if p.is_dir() else p)}
    common = sorted(set.intersection(*(set(r) for r in results.values())))
    if not common:
        raise SystemExit(f"no example id is in all of {runs}: nothing to compare")
    summaries = {k: summarize([v[i] for i in common]) for k, v in results.items()}
    base = runs[0]
    passes = {k: [(v[i]["score"] or 0) > 0.5 for i in common] for k, v in results.items()}
    tests = {k: S.mcnemar(passes[base], passes[k]) for k in runs[1:]}
    out = {"n_common": len(common), "runs": {k: {"healthbench_score": s["healthbench_score"], "pass_rate": s["pass_rate"],
                                                 "format_compliance": s["format_compliance"]} for k, s in summaries.items()},
           "mcnemar_vs_first": tests}
    (out_dir / "compare.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    lines = [f"# comparison on {len(common)} common examples", "",
             "| run | HealthBench score | 95% CI | pass rate | 95% CI | McNemar p vs first (n01/n10) |", "|---|---|---|---|---|---|"]
    for k, s in summaries.items():
        t = tests.get(k)
        lines.append(f"| {k} | {_ci(s['healthbench_score'])} | {_ci(s['pass_rate'])} | "
                     + (f"{t['p_value']:.4g} ({t['n01']}/{t['n10']})" if t else "—") + " |")
    (out_dir / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.4 * len(runs) + 2, 3.5))
    vals = [summaries[k]["healthbench_score"] for k in runs]
    ax.bar(range(len(runs)), [v["value"] for v in vals], yerr=[[v["value"] - v["lo"] for v in vals],
                                                             [v["hi"] - v["value"] for v in vals]], capsize=4)
    ax.set_xticks(range(len(runs)), [Path(k).name or k for k in runs], rotation=20)
    ax.set(ylabel="HealthBench score (95% CI)", title=f"n = {len(common)}")
    fig.tight_layout(), fig.savefig(out_dir / "compare.png", dpi=120), plt.close(fig)
    print("\n".join(lines))
    return out


def build_judge(args, responder):
    """The judge the flags name. openai: HealthBench's grader model unless --judge-model; local: --judge-model loaded
    with grpo.model.load_model, else the policy's own model and tokenizer (LocalJudge grades with its adapter off)."""
    from rewards.judge import make_judge
    if args.judge == "local":
        if args.judge_model:
            from grpo.model import load_model
            model, tok = load_model(args.judge_model)
        elif isinstance(responder, PolicyResponder):
            model, tok = responder.model, responder.tok
        else:
            raise SystemExit("--judge local with --api-model has no local weights to grade with: pass --judge-model "
                             "(an HF dir or hub id)")
        return make_judge("local", model=model, tokenizer=tok)
    if args.judge == "openai":  # one request per criterion, as HealthBench's grader does
        from rewards.openai_judge import HEALTHBENCH_GRADER
        kw = {"model": args.judge_model or HEALTHBENCH_GRADER, "mode": args.judge_mode, "concurrency": args.concurrency}
        return make_judge("openai", **kw, **({"base_url": args.judge_base_url} if args.judge_base_url else {}))
    if args.judge_model or args.judge_base_url:
        raise SystemExit(f"--judge {args.judge} takes no --judge-model / --judge-base-url: use --judge openai or local")
    return make_judge(args.judge)


def grader_label(judge) -> str:
    """Who graded, for the summary: a keyword- or locally-judged score must not pass for HealthBench's."""
    mode = getattr(judge, "mode", None)
    if mode == "per_criterion":
        return f"{judge.model}, per criterion (HealthBench's grader)"
    if mode == "per_completion":
        return f"{judge.model}, per completion (a cheaper approximation of HealthBench's grader)"
    return {"KeywordJudge": "keyword toy judge (not an LLM grade)",
            "LocalJudge": "local model, yes/no logits per criterion (not HealthBench's grader)"}.get(
        type(judge).__name__, type(judge).__name__)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, EvalConfig)  # grpo/config.py: flags, preset, checks

    if args.compare:
        compare(args.compare, args.out)
        return 0
    samples = load_samples(resolve_data_path(args.data))
    samples = select(samples, heart_only=args.heart_only, n=args.n, seed=args.seed)[: args.limit]
    if not samples:
        raise SystemExit(f"{args.data}: no examples selected (check --heart-only / --n)")
    if args.judge == "local" and args.api_model and not args.judge_model:
        build_judge(args, None)  # its one-line error, before anything loads
    judge = None if args.judge == "local" else build_judge(args, None)  # a judge error shows before the policy loads
    if args.api_model:
        responder = ApiResponder(args.api_model, base_url=args.api_base_url, api_key_env=args.api_key_env,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 concurrency=args.concurrency)
    else:
        responder = PolicyResponder(args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, seed=args.seed)
    judge = judge or build_judge(args, responder)
    records = asyncio.run(run(samples, responder, judge, args.out, batch_size=args.batch_size,
                              progress=not args.no_progress))
    summary = summarize(records, n_boot=args.bootstrap, seed=args.seed)
    summary["grader"], summary["config"] = grader_label(judge), dataclasses.asdict(args)
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    md = markdown(summary, f"evaluation of {args.api_model or args.model}{' + ' + args.adapter if args.adapter else ''}")
    (out / "summary.md").write_text(md, encoding="utf-8")
    plot_run(records, summary, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main, sys.argv[1:]))
