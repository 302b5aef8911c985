"""Build the heart-focused training set: load, keep heart-related questions, split, write JSONL.

    python -m data.build --rar train.jsonl --out data/heart      # RaR-Medicine (JSONL or parquet) → DIR/*.jsonl
    python -m data.build --rar train.jsonl --out data/heart --classifier llm --judge-model gpt-4.1-mini \
        [--judge-base-url http://localhost:8000/v1] [--judge-concurrency 16]   # the paper's LLM filter

Writes DIR/sft.jsonl, DIR/grpo.jsonl, DIR/val.jsonl, DIR/test.jsonl (HealthBench-shaped records that
`data.load_samples` reads; heart theme as tag `heart:<theme>`, RaR category as criterion tag `category:<name>`)
and DIR/build.json (counts and the arguments). The SFT half then gets reasoning traces from `python -m data.augment`.

`--classifier llm` keeps what an LLM (any OpenAI-compatible server, the judge's client) calls heart-related, asking
only about the lexicon's candidates (score >= --prefilter) and keeping a positive only when one of its keywords is
in the question (the paper's verification). Answers go to DIR/heart_llm.sqlite as they arrive, so a rerun, or a run
resumed after a kill, makes no call twice. Items whose call failed after retries are *unknown*: listed in
DIR/heart_unknown.jsonl, counted in build.json, left out of the splits, and the command exits with status 3 —
rerun it to ask again about those only.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path

from data.heart import PREFILTER, LLMClassifier, classify, sample_text
from data.loaders import is_heart, iter_samples, write_samples
from data.splits import split

UNKNOWN_EXIT = 3  # some items could not be classified (judge failures): outputs written, rerun to finish


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="filter heart-related samples, split by id hash, write JSONL")
    ap.add_argument("--rar", required=True, nargs="+", help="input file(s): RaR-Medicine / HealthBench / heart JSONL")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--all", action="store_true", help="keep every sample, not only heart-related ones")
    ap.add_argument("--val", type=float, default=0.1, help="fraction of samples for validation")
    ap.add_argument("--test", type=float, default=0.1, help="fraction of samples for test")
    ap.add_argument("--sft", type=float, default=0.5, help="fraction of train for the SFT warm start (rest: GRPO)")
    ap.add_argument("--min-criteria", type=int, default=4, help="GRPO keeps prompts with at least this many criteria")
    ap.add_argument("--seed", default="", help="salt of the split hash (empty = the default split)")
    ap.add_argument("--skip-bad", action="store_true", help="skip malformed records (counted) instead of stopping")
    ap.add_argument("--classifier", choices=("lexicon", "llm"), default="lexicon",
                    help="heart filter: the offline lexicon, or an LLM over the lexicon's candidates")
    ap.add_argument("--judge-model", help="--classifier llm: model name on the OpenAI-compatible server")
    ap.add_argument("--judge-base-url", help="--classifier llm: server URL (default OPENAI_BASE_URL or api.openai.com)")
    ap.add_argument("--judge-concurrency", type=int, default=16, help="--classifier llm: requests in flight")
    ap.add_argument("--judge-timeout", type=float, default=60.0, help="--classifier llm: seconds per attempt")
    ap.add_argument("--judge-retries", type=int, default=5, help="--classifier llm: client retries per request")
    ap.add_argument("--prefilter", type=float, default=PREFILTER,
                    help="--classifier llm: lexicon score from which a question goes to the LLM")
    args = ap.parse_args(argv)
    if args.classifier == "llm" and not args.judge_model:
        ap.error("--classifier llm needs --judge-model NAME (e.g. gpt-4.1-mini, or the model your server serves)")
    if args.judge_concurrency < 1:
        ap.error(f"--judge-concurrency must be >= 1, got {args.judge_concurrency}")
    llm = None
    if args.classifier == "llm":  # built before reading anything, so a missing key fails in one line at once
        try:
            llm = LLMClassifier(args.judge_model, base_url=args.judge_base_url, concurrency=args.judge_concurrency,
                                timeout=args.judge_timeout, max_retries=args.judge_retries,
                                cache_path=str(_mkdir(args.out) / "heart_llm.sqlite"), prefilter=args.prefilter)
        except ValueError as e:
            ap.error(str(e))

    errors: list = []
    seen, kept, total, unknown = set(), [], 0, []
    for path in args.rar:
        for s in iter_samples(path, skip_bad=args.skip_bad, errors=errors):
            total += 1
            if s.id not in seen and (args.all or llm is not None or is_heart(s)):
                seen.add(s.id)
                kept.append(s)
    if llm is not None and not args.all:
        kept, unknown = _llm_filter(llm, kept)
    parts = split(kept, val=args.val, test=args.test, sft=args.sft, seed=args.seed, min_criteria=args.min_criteria)
    out = Path(args.out)
    counts = {name: write_samples(out / f"{name}.jsonl", parts[name]) for name in ("sft", "grpo", "val", "test")}
    themes = collections.Counter(t for s in kept for t in s.tags if t.startswith("heart:"))
    summary = {"read": total, "skipped_bad": len(errors), "kept": len(kept), "splits": counts,
               "themes": dict(themes.most_common()), "args": vars(args)}
    if llm is not None:
        calls = {k: v for k, v in llm.judge.stats().items()
                 if k.split("/")[1] in ("calls", "errors", "reasks", "prompt_tokens", "completion_tokens")}
        summary["classifier"] = {**llm.stats, **calls}
        summary["heart_unknown"] = len(unknown)
        with open(out / "heart_unknown.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": s.id}) + "\n" for s in unknown)
        llm.close()
    (out / "build.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"read {total} ({len(errors)} bad lines skipped), kept {len(kept)} "
          f"{'samples' if args.all else 'heart-related'}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for e in errors[:5]:
        print("skipped:", e, file=sys.stderr)
    if unknown:
        print(f"{len(unknown)} questions unknown (the classifier's calls failed after retries; ids in "
              f"{out / 'heart_unknown.jsonl'}): rerun the same command to ask about those only", file=sys.stderr)
        return UNKNOWN_EXIT
    return 0


def _mkdir(path) -> Path:
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _llm_filter(llm: LLMClassifier, samples: list) -> tuple[list, list]:
    """(heart-related samples with the LLM's theme as their heart tag, samples whose label is unknown)."""
    from rewards.openai_judge import JudgeConfigError
    try:
        labels = llm.classify_sync([sample_text(s) for s in samples], progress=True)
    except JudgeConfigError as e:
        sys.exit(str(e))
    kept, unknown = [], []
    for s, label in zip(samples, labels):
        if label is None:
            unknown.append(s)
        elif label.related:
            theme = label.theme or classify(sample_text(s)).theme or "cardiovascular_disease"  # the LLM gave none
            tags = tuple(t for t in s.tags if not t.startswith("heart:")) + (f"heart:{theme}",)
            kept.append(dataclasses.replace(s, tags=tags))
    return kept, unknown


if __name__ == "__main__":
    sys.exit(main())
