"""Rubric data model: signed criteria, converters from HealthBench and RaR-Medicine rubric items.

Points are signed: positive = desirable behaviour, negative = pitfall. A verdict `met[i]` is True/False/None
(unknown); for a negative criterion True means the pitfall *happened* (HealthBench convention).
A RaR category (Essential/Important/Optional/Pitfall) travels as the tag `category:<name>`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

CATEGORIES = ("essential", "important", "optional", "pitfall")
_RAR_PREFIX = re.compile(r"^\s*(essential|important|optional|pitfall)\s+criteria\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Criterion:
    text: str
    points: float
    tags: tuple = ()

    @property
    def category(self) -> str | None:
        """RaR category from the `category:` tag, or None (HealthBench criteria have none)."""
        for tag in self.tags:
            if tag.startswith("category:"):
                return tag.split(":", 1)[1]
        return None


@dataclass(frozen=True)
class Rubric:
    criteria: list = field(default_factory=list)  # list[Criterion]

    def __len__(self) -> int:
        return len(self.criteria)

    def __iter__(self):
        return iter(self.criteria)


def _points(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: points must be a finite number, got {value!r}")
    return float(value)


def from_healthbench(items: list) -> Rubric:
    """HealthBench `rubrics`: [{"criterion": str, "points": int, "tags": [str]}, ...]."""
    criteria = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("criterion"), str):
            raise ValueError(f"rubric item {i}: expected {{'criterion': str, 'points': number}}, got {item!r:.120}")
        criteria.append(Criterion(item["criterion"], _points(item.get("points"), f"rubric item {i}"),
                                  tuple(item.get("tags") or ())))
    return Rubric(criteria)


def rar_category(weight: float, listed: str | None = None) -> str:
    """Category of a RaR item: the `rubric_list` prefix ("Essential Criteria: ...") when given, else from the
    weight as the dataset assigns it (Essential 5, Important 3–4, Optional 1–2, Pitfall < 0)."""
    if listed:
        m = _RAR_PREFIX.match(listed)
        if m:
            return m.group(1).lower()
    if weight < 0:
        return "pitfall"
    return "essential" if weight >= 5 else "important" if weight >= 3 else "optional"


def from_rar(items: list, rubric_list: list | None = None) -> Rubric:
    """RaR-Medicine `rubric`: [{"description": str, "title": str, "weight": int}, ...]; `rubric_list` (same order,
    "<Category> Criteria: <description>") supplies the category when present."""
    if rubric_list is not None and len(rubric_list) != len(items):
        rubric_list = None  # misaligned list: fall back to weights rather than mislabel
    criteria = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("description"), str):
            raise ValueError(f"rubric item {i}: expected {{'description': str, 'weight': number}}, got {item!r:.120}")
        weight = _points(item.get("weight"), f"rubric item {i}")
        category = rar_category(weight, rubric_list[i] if rubric_list else None)
        criteria.append(Criterion(item["description"], weight, (f"category:{category}",)))
    return Rubric(criteria)
