"""Judges: from (question, completion, rubric) to one verdict per criterion — True / False / None (unknown).

    python -c "from rewards.judge import make_judge, grade_sync; from data import load_samples, bundled_demo_path; \
s = load_samples(bundled_demo_path())[0]; print(grade_sync(make_judge('keyword'), [(s.prompt, 'call emergency services', s.rubric)]))"

One async interface (rewards/judge_base.py), three graders, and the factory `make_judge`:
- KeywordJudge (here): offline, deterministic toy grader — the CPU demo and the tests use it.
- OpenAIJudge (rewards/openai_judge.py): any OpenAI-compatible chat-completions server.
- LocalJudge (rewards/local_judge.py): a transformers causal LM answering yes/no, e.g. the policy's own base weights.
For a negative-points criterion True means the pitfall happened (HealthBench convention). A verdict the judge
could not produce is None, never a silent False; the reward functions drop it.
"""
from __future__ import annotations

import math
import re

from rewards.judge_base import MODES, STAT_KEYS, Item, Judge, grade_sync, rate_sync

__all__ = ["JUDGES", "MODES", "STAT_KEYS", "Item", "Judge", "KeywordJudge", "grade_sync", "keyword_verdict", "keywords",
           "make_judge", "rate_sync"]

# ---- the keyword judge ----
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits and '_' split words
STOPWORDS = frozenset("""
about above after again against also among another because been before being below between both cannot could does
doing down during each either else every from further have having here hers herself himself however into itself just
like more most much must need only other ours over same shall should since some such than that their theirs them
then there these they this those through under until upon very were what when where whether which while whom whose
will with within without would your yours yourself
""".split())
# words every rubric uses to frame a criterion; they say nothing about the answer's content
RUBRIC_VERBS = frozenset("""
mention mentions mentioned explain explains explained state states stated recommend recommends recommended identify
identifies identified response responses advise advises advised suggest suggests suggested provide provides provided
include includes included describe describes described note notes noted discuss discusses discussed indicate
indicates emphasize emphasizes emphasise emphasises highlight highlights acknowledge acknowledges correctly clearly
appropriately answer answers user asks
""".split())


def keywords(criterion: str) -> tuple[str, ...]:
    """Content keywords of a criterion: distinct lowercased letter-runs of ≥ 4 letters, minus STOPWORDS and
    RUBRIC_VERBS, in order of first appearance."""
    words = (w.lower() for w in _WORD.findall(criterion))
    return tuple(dict.fromkeys(w for w in words if len(w) >= 4 and w not in STOPWORDS and w not in RUBRIC_VERBS))


def keyword_verdict(criterion: str, completion: str) -> bool | None:
    """The KeywordJudge rule: None when the criterion has no keywords, else True iff at least ceil(k/2) of its k
    keywords occur as whole words (lowercased letter-runs) in the completion."""
    keys = keywords(criterion)
    if not keys:
        return None
    present = {w.lower() for w in _WORD.findall(completion)}
    return sum(k in present for k in keys) >= math.ceil(len(keys) / 2)


class KeywordJudge(Judge):
    """A TOY grader, offline and deterministic: criterion i is met when at least half (rounded up) of its content
    keywords appear in the completion.

    Keywords of a criterion = its distinct lowercased words (runs of letters) of ≥ 4 letters, minus a stopword list
    and generic rubric verbs ("mentions", "explains", "states", "recommends", "identifies", "response", ...).
    A keyword occurs when it equals a lowercased word of the completion (a word-boundary match: "aspirin" does not
    match "aspirins"). A criterion with no keywords gets None (unknown). Negative criteria use the same rule, so a
    pitfall "happened" when its keywords occur. There is no understanding here — no negation, no paraphrase — which
    is the point: a policy can raise its reward by emitting the right words, so the CPU demo visibly learns.
    """

    async def _grade(self, question, completion, rubric):
        self._stats["calls"] += 1
        return [keyword_verdict(c.text, completion) for c in rubric]


JUDGES = ("keyword", "openai", "local")  # make_judge's names: offline toy | OpenAI-compatible server | transformers


def make_judge(kind: str, **kwargs) -> Judge:
    """Build a judge by name: "keyword" (no kwargs), "openai" (OpenAIJudge kwargs), "local" (LocalJudge kwargs)."""
    if kind == "keyword":
        if kwargs:
            raise ValueError(f"the keyword judge takes no options, got {sorted(kwargs)}")
        return KeywordJudge()
    if kind == "openai":
        from rewards.openai_judge import OpenAIJudge
        return OpenAIJudge(**kwargs)
    if kind == "local":
        from rewards.local_judge import LocalJudge
        return LocalJudge(**kwargs)
    raise ValueError(f"unknown judge {kind!r}: choose keyword (offline toy), openai (any OpenAI-compatible server) "
                     f"or local (a transformers model)")


def __getattr__(name):  # `from rewards.judge import OpenAIJudge` without importing openai/torch for the keyword judge
    if name == "OpenAIJudge":
        from rewards.openai_judge import OpenAIJudge
        return OpenAIJudge
    if name == "LocalJudge":
        from rewards.local_judge import LocalJudge
        return LocalJudge
    raise AttributeError(name)
