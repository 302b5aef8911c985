"""Rubric rewards: data model, pure reward functions, judges."""
from rewards.rubric import Criterion, Rubric

__all__ = ["Criterion", "Rubric"]
