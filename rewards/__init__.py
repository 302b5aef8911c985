"""Rubric rewards: data model, pure reward functions, judges."""
from rewards.rubric import Criterion, Rubric, from_healthbench, from_rar

__all__ = ["Criterion", "Rubric", "from_healthbench", "from_rar"]
