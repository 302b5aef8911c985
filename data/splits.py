"""Deterministic splits by a hash of the sample id: train/val/test, then train into SFT and GRPO halves.

    python -m data.build --rar PATH --out DIR          # uses these splits

A sample's split depends only on (seed, id) — not on file order, the other samples, the machine or the Python hash
seed — so adding records never moves an existing one between train and test.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def _unit(key: str) -> float:
    """sha256(key) as a number in [0, 1): the first 8 bytes over 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_of(sample_id: str, *, val: float = 0.1, test: float = 0.1, seed: str = "") -> str:
    """"test" for the first `test` of the unit interval, then "val", else "train"."""
    if not (0 <= val and 0 <= test and val + test <= 1):
        raise ValueError(f"val={val}, test={test}: fractions must be ≥ 0 and sum to ≤ 1")
    u = _unit(f"{seed}:split:{sample_id}")
    return "test" if u < test else "val" if u < test + val else "train"


def half_of(sample_id: str, *, sft: float = 0.5, seed: str = "") -> str:
    """A train sample's stage: "sft" (format warm-start) or "grpo"; an independent hash from `split_of`."""
    return "sft" if _unit(f"{seed}:half:{sample_id}") < sft else "grpo"


def split(samples, *, val: float = 0.1, test: float = 0.1, sft: float = 0.5, seed: str = "",
          min_criteria: int = 4) -> dict[str, list]:
    """{"train", "val", "test", "sft", "grpo"} → samples, input order kept. GRPO keeps prompts with at least
    `min_criteria` criteria (the paper: more than 3), since a short rubric gives little reward spread in a group."""
    out: dict[str, list] = {k: [] for k in (*SPLITS, "sft", "grpo")}
    for s in samples:
        part = split_of(s.id, val=val, test=test, seed=seed)
        out[part].append(s)
        if part == "train":
            half = half_of(s.id, sft=sft, seed=seed)
            if half == "sft" or len(s.rubric) >= min_criteria:
                out[half].append(s)
    return out
