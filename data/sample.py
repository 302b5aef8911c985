"""The one record type every loader returns."""
from __future__ import annotations

from dataclasses import dataclass

from rewards.rubric import Rubric


@dataclass(frozen=True)
class Sample:
    id: str
    prompt: list  # list[dict(role, content)] — the conversation so far, ending with a user turn
    rubric: Rubric
    reference: str | None = None
    tags: tuple = ()  # e.g. ("theme:hedging", "heart:arrhythmia", "source:...")
    reasoning: str | None = None  # a reasoning trace for the SFT target (the paper's `synthetic_reasoning`), if any
