"""Rubric rewards: data model, pure reward functions, judges (rewards/judge.py)."""
from rewards.functions import RATING_REWARDS, REWARDS, needs, rar_implicit, known_rewards, score
from rewards.rubric import Criterion, Rubric, from_healthbench, from_rar, rar_category

__all__ = ["Criterion", "Rubric", "from_healthbench", "from_rar", "rar_category", "REWARDS", "RATING_REWARDS",
           "needs", "score", "known_rewards", "rar_implicit"]
