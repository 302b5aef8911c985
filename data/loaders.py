"""Loaders: HealthBench JSONL, RaR-Medicine (JSONL or parquet) and the paper's heart JSONL → `Sample`.

    python -m data.loaders PATH [--skip-bad]      # prints counts per format and theme

The format is detected per record from its fields:
- HealthBench: `prompt_id`, `prompt` [{role, content}], `rubrics` [{criterion, points, tags}], `example_tags`,
  `ideal_completions_data` (the bundled demo uses this shape too).
- RaR-Medicine: `question`, `reference_answer`, `rubric` [{description, title, weight}], `rubric_list`, ... ; the
  paper's heart JSONL is RaR rows with `heart_related`, `heart_theme`, `heart_keywords`, `synthetic_reasoning` added.
Tags: HealthBench `example_tags` as they are, `source:<question_source>` for RaR, and `heart:<theme slug>` from the
record when it says so, else from the lexicon filter (`data.heart.classify`) when the question is heart-related.
A malformed line (bad JSON, bytes that are not UTF-8, a rubric whose criteria all have 0 points, so no reward can
vary) is a ValueError naming file and line; with `skip_bad=True` it is skipped and reported in `errors`. A file with no
usable record is an error too. `clip_messages` cuts a long prompt for the judge to the policy's prompt budget.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator

from data.heart import THEMES, classify, sample_text
from data.sample import Sample
from rewards.rubric import from_healthbench, from_rar

ROLES = ("system", "user", "assistant", "developer")


def _messages(prompt, where: str) -> list:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: `prompt` must be a non-empty list of {{role, content}}")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: prompt[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.100}")
    if prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the conversation must end with a user turn (got {prompt[-1]['role']!r})")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _heart_slug(value) -> str | None:
    """A theme as the paper's JSONL or our tags spell it ("Heart Failure", "heart_failure") → slug, else None."""
    if not isinstance(value, str):
        return None
    names = {v.lower(): k for k, v in THEMES.items()} | {k: k for k in THEMES}
    return names.get(value.strip().lower()) or names.get(value.strip().lower().replace(" ", "_"))


def from_record(rec: dict, where: str = "record", *, heart: bool = True) -> Sample:
    """One parsed JSON object → Sample (format detected from its fields). Raises ValueError naming `where`."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    try:
        if "rubrics" in rec and "prompt" in rec:  # HealthBench
            sid = rec.get("prompt_id")
            if not isinstance(sid, str) or not sid:
                raise ValueError("missing `prompt_id`")
            prompt = _messages(rec["prompt"], where)
            if not isinstance(rec["rubrics"], list):
                raise ValueError("`rubrics` must be a list")
            rubric = from_healthbench(rec["rubrics"])
            ideal = rec.get("ideal_completions_data")
            reference = ideal.get("ideal_completion") if isinstance(ideal, dict) else None
            tags = tuple(t for t in rec.get("example_tags") or () if isinstance(t, str))
            reasoning = rec.get("synthetic_reasoning") if isinstance(rec.get("synthetic_reasoning"), str) else None
        elif "question" in rec and "rubric" in rec:  # RaR-Medicine, or the paper's heart JSONL
            if not isinstance(rec["question"], str) or not rec["question"].strip():
                raise ValueError("`question` must be a non-empty string")
            sid = rec.get("id") or rec.get("uid") or "rar-" + hashlib.sha1(rec["question"].encode()).hexdigest()[:16]
            prompt = [{"role": "user", "content": rec["question"]}]
            if not isinstance(rec["rubric"], list):
                raise ValueError("`rubric` must be a list")
            rubric = from_rar(rec["rubric"], rec.get("rubric_list") if isinstance(rec.get("rubric_list"), list) else None)
            reference = rec.get("reference_answer") if isinstance(rec.get("reference_answer"), str) else None
            tags = (f"source:{rec['question_source']}",) if isinstance(rec.get("question_source"), str) else ()
            reasoning = rec.get("synthetic_reasoning") if isinstance(rec.get("synthetic_reasoning"), str) else None
            if rec.get("heart_related") is True and _heart_slug(rec.get("heart_theme")):
                tags += (f"heart:{_heart_slug(rec['heart_theme'])}",)
        else:
            raise ValueError("unknown format: expected HealthBench fields (prompt_id, prompt, rubrics) or "
                             "RaR-Medicine fields (question, rubric)")
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    if len(rubric) == 0:
        raise ValueError(f"{where}: empty rubric")
    if all(c.points == 0 for c in rubric):  # every reward is then constant: the group has zero variance, always
        raise ValueError(f"{where}: every rubric criterion has 0 points, so no reward can vary; fix the points or drop "
                         f"the record")
    sample = Sample(str(sid), prompt, rubric, reference, tags, reasoning)
    if heart and not is_heart(sample):
        label = classify(sample_text(sample))
        if label.related:
            sample = Sample(sample.id, prompt, rubric, reference, tags + (f"heart:{label.theme}",), reasoning)
    return sample


def to_record(sample: Sample) -> dict:
    """Sample → a HealthBench-shaped record that `from_record` reads back unchanged (criterion tags such as
    `category:pitfall` and the sample's tags survive; the reasoning travels as `synthetic_reasoning`)."""
    rec = {"prompt_id": sample.id, "prompt": sample.prompt,
           "rubrics": [{"criterion": c.text, "points": c.points, "tags": list(c.tags)} for c in sample.rubric],
           "example_tags": list(sample.tags),
           "ideal_completions_data": {"ideal_completion": sample.reference} if sample.reference is not None else None}
    if sample.reasoning is not None:
        rec["synthetic_reasoning"] = sample.reasoning
    return rec


def write_samples(path, samples) -> int:
    """Write Samples as HealthBench-shaped JSONL (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(to_record(s), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(samples)


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, parsed object or the exception) for each record; `where` is "file:line"."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`), or convert to JSONL") from None
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row {i}", row
        return
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is an error at its line, not silently replaced
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield f"{path}:{n}", ValueError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}); "
                                                f"re-encode the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{n}", ValueError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})")


def iter_samples(path, *, skip_bad: bool = False, errors: list | None = None, heart: bool = True) -> Iterator[Sample]:
    """Stream Samples from a JSONL/parquet file. Bad records raise ValueError("file:line: why"), or with `skip_bad`
    are skipped and their messages appended to `errors` (when given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    for where, rec in _records(path):
        try:
            if isinstance(rec, Exception):
                raise rec
            yield from_record(rec, where, heart=heart)
        except ValueError as e:
            if not skip_bad:
                raise
            if errors is not None:
                errors.append(str(e))


def load_samples(path, *, skip_bad: bool = False, errors: list | None = None, heart: bool = True) -> list[Sample]:
    """All Samples of a file (see `iter_samples`). Duplicate ids are an error: splits and resume key on them; so is a
    file with no usable sample (empty, or every line skipped)."""
    samples, seen = [], set()
    errors = [] if errors is None else errors
    for s in iter_samples(path, skip_bad=skip_bad, errors=errors, heart=heart):
        if s.id in seen:
            msg = f"{path}: duplicate sample id {s.id!r}"
            if not skip_bad:
                raise ValueError(msg)
            if errors is not None:
                errors.append(msg)
            continue
        seen.add(s.id)
        samples.append(s)
    if not samples:
        raise ValueError(f"{path}: no samples" + (f" ({len(errors)} bad lines skipped, first: {errors[0]})" if errors
                                                   else " (the file is empty)"))
    return samples


def clip_messages(messages: list[dict], tokenizer, max_tokens: int) -> list[dict]:
    """The judge's copy of a prompt, cut like the policy's: the last `max_tokens` tokens of the conversation (older
    turns dropped first, then the start of the oldest kept turn, marked "…"). Counts content tokens only, so the
    judge sees at least what the policy saw. A 10 MB line costs one tokenizer pass over its tail, not the whole."""
    out, budget = [], max_tokens
    for m in reversed(messages):
        if budget <= 0:
            break
        text = m["content"][-max(64, budget * 32):]  # no token is longer than 32 chars in practice: cap the work
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > budget or len(text) < len(m["content"]):
            text = "…" + tokenizer.decode(ids[-budget:]) if len(ids) > budget else "…" + text
        out.append({**m, "content": text})
        budget -= min(len(ids), budget)
    return out[::-1]


def bundled_demo_path() -> Path:
    """The embedded demo's training data: ~40 short heart questions with keyword-friendly rubrics (our own text)."""
    return Path(__file__).resolve().parent / "samples" / "heart_demo.jsonl"


def resolve_data_path(data: str | Path) -> Path:
    """A `--data` value as a path: the word "demo" names the bundled sample (every entry point's default)."""
    return bundled_demo_path() if str(data) == "demo" else Path(data)


def is_heart(sample: Sample) -> bool:
    """Whether the heart filter tagged this sample (a `heart:<theme>` tag, from data.heart.classify or the file)."""
    return any(t.startswith("heart:") for t in sample.tags)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--skip-bad", action="store_true", help="skip malformed lines (counted) instead of stopping")
    args = ap.parse_args(argv)
    errors: list = []
    samples = load_samples(args.path, skip_bad=args.skip_bad, errors=errors)
    tags = collections.Counter(t for s in samples for t in s.tags if t.startswith(("theme:", "heart:")))
    print(f"{len(samples)} samples, {len(errors)} skipped, "
          f"{sum(len(s.rubric) for s in samples) / max(len(samples), 1):.1f} criteria/sample")
    for tag, n in sorted(tags.items()):
        print(f"  {tag:40s} {n}")
    for e in errors[:10]:
        print("skipped:", e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
