"""Rubric rewards: data model, pure reward functions, judges (rewards/judge.py)."""
from rewards.functions import REWARDS, rar_implicit
from rewards.rubric import Criterion, Rubric, from_healthbench, from_rar, rar_category

__all__ = ["Criterion", "Rubric", "from_healthbench", "from_rar", "rar_category", "REWARDS", "rar_implicit"]
