"""Rubric data model: signed criteria and their verdicts.

Points are signed: positive = desirable behaviour, negative = pitfall. A verdict `met[i]` is True/False/None
(unknown); for a negative criterion True means the pitfall *happened* (HealthBench convention).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Criterion:
    text: str
    points: float
    tags: tuple = ()


@dataclass(frozen=True)
class Rubric:
    criteria: list = field(default_factory=list)  # list[Criterion]

    def __len__(self) -> int:
        return len(self.criteria)
