"""Build the heart-focused training set: load, keep heart-related questions, split, write JSONL.

    python -m data.build --rar train.jsonl --out data/heart      # RaR-Medicine (JSONL or parquet) → DIR/*.jsonl

Writes DIR/sft.jsonl, DIR/grpo.jsonl, DIR/val.jsonl, DIR/test.jsonl (HealthBench-shaped records that
`data.load_samples` reads; heart theme as tag `heart:<theme>`, RaR category as criterion tag `category:<name>`)
and DIR/build.json (counts and the arguments). The SFT half then gets reasoning traces from `python -m data.augment`.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from data.loaders import iter_samples, write_samples
from data.splits import split


def is_heart(sample) -> bool:
    return any(t.startswith("heart:") for t in sample.tags)


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
    args = ap.parse_args(argv)

    errors: list = []
    seen, kept, total = set(), [], 0
    for path in args.rar:
        for s in iter_samples(path, skip_bad=args.skip_bad, errors=errors):
            total += 1
            if s.id not in seen and (args.all or is_heart(s)):
                seen.add(s.id)
                kept.append(s)
    parts = split(kept, val=args.val, test=args.test, sft=args.sft, seed=args.seed, min_criteria=args.min_criteria)
    out = Path(args.out)
    counts = {name: write_samples(out / f"{name}.jsonl", parts[name]) for name in ("sft", "grpo", "val", "test")}
    themes = collections.Counter(t for s in kept for t in s.tags if t.startswith("heart:"))
    summary = {"read": total, "skipped_bad": len(errors), "kept": len(kept), "splits": counts,
               "themes": dict(themes.most_common()), "args": vars(args)}
    (out / "build.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"read {total} ({len(errors)} bad lines skipped), kept {len(kept)} "
          f"{'samples' if args.all else 'heart-related'}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for e in errors[:5]:
        print("skipped:", e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
