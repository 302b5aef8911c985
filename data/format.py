"""The structured output format: system prompt, chat messages, the SFT target, and a parser that never raises.

    python -m data.format "<start_working_out>why<end_working_out><SOLUTION>answer</SOLUTION>"   # prints Parsed

A response is reasoning between <start_working_out> and <end_working_out>, then the answer between <SOLUTION> and
</SOLUTION>. `parse` is applied to untrusted model output: any string gives a Parsed, and `solution` is always the best
guess at the answer (the whole text minus the reasoning block when the tags are missing), so the judge still grades
something; `well_formed` is the format-compliance metric. Training may instead treat a malformed completion as a
wrong answer (`graded_answer`, --malformed wrong): the judge then grades the empty answer.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

REASONING_START, REASONING_END = "<start_working_out>", "<end_working_out>"
SOLUTION_START, SOLUTION_END = "<SOLUTION>", "</SOLUTION>"
TAGS = (REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END)

SYSTEM_PROMPT = (
    "You are a careful, heart-focused medical assistant. Think about the question first and write your working "
    f"between {REASONING_START} and {REASONING_END}. Then give your answer to the user between {SOLUTION_START} "
    f"and {SOLUTION_END}: clear, accurate, and saying when to call emergency services or see a doctor."
)

_WELL_FORMED = re.compile(
    rf"\s*{re.escape(REASONING_START)}(.*?){re.escape(REASONING_END)}\s*"
    rf"{re.escape(SOLUTION_START)}(.*?){re.escape(SOLUTION_END)}\s*", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    reasoning: str  # "" when there is no reasoning block
    solution: str   # the answer to grade: the SOLUTION block, else the best guess (see module docstring)
    well_formed: bool  # exactly one of each tag, in order, nothing outside but whitespace, non-empty answer


def to_messages(sample) -> list[dict]:
    """System prompt + the sample's conversation, for `tokenizer.apply_chat_template(..., add_generation_prompt=True)`.
    A system turn already in the data is kept, after ours, as part of the one system message."""
    turns = [dict(m) for m in sample.prompt]
    system = SYSTEM_PROMPT
    while turns and turns[0].get("role") in ("system", "developer"):
        system += "\n\n" + turns.pop(0)["content"]
    return [{"role": "system", "content": system}] + turns


def format_target(reasoning: str, answer: str) -> str:
    """The SFT target text; `parse(format_target(r, a))` gives back (r, a) stripped, well_formed when `a` is non-empty."""
    return f"{REASONING_START}\n{reasoning.strip()}\n{REASONING_END}\n{SOLUTION_START}\n{answer.strip()}\n{SOLUTION_END}"


def parse(text) -> Parsed:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    m = _WELL_FORMED.fullmatch(text)
    if m and all(text.count(t) == 1 for t in TAGS) and m.group(2).strip():
        return Parsed(m.group(1).strip(), m.group(2).strip(), True)
    # Best effort on malformed output: reasoning = the (possibly unclosed) working-out block; solution = the SOLUTION
    # block (closed or not), else the text with the reasoning removed.
    reasoning = ""
    start = text.find(REASONING_START)
    end = text.find(REASONING_END, start + 1 if start >= 0 else 0)
    if start >= 0:
        reasoning = text[start + len(REASONING_START):end if end >= 0 else len(text)]
    s = text.rfind(SOLUTION_START)
    if s >= 0:
        e = text.find(SOLUTION_END, s)
        solution = text[s + len(SOLUTION_START):e if e >= 0 else len(text)]
    elif start >= 0:
        solution = text[:start] + (text[end + len(REASONING_END):] if end >= 0 else "")
    elif end >= 0:
        reasoning, solution = text[:end], text[end + len(REASONING_END):]
    else:
        solution = text
    for tag in TAGS:
        reasoning, solution = reasoning.replace(tag, ""), solution.replace(tag, "")
    return Parsed(reasoning.strip(), solution.strip(), False)


MALFORMED = ("graded", "wrong")  # --malformed: what the judge grades for a completion that is not well_formed


def graded_answer(parsed: Parsed, malformed: str = "graded") -> str:
    """The answer the judge grades. `graded`: the best-effort solution even from malformed output (evaluation's
    view). `wrong`: a malformed completion is a wrong answer, so it is graded as the empty answer "", which meets no
    positive criterion and avoids any pitfall a rubric can check in text — no reward formula is special-cased, every
    reward scores it as it scores saying nothing, and form then carries reward in GRPO."""
    if malformed not in MALFORMED:
        raise ValueError(f"malformed={malformed!r} must be one of {' | '.join(MALFORMED)}")
    return parsed.solution if parsed.well_formed or malformed == "graded" else ""


if __name__ == "__main__":
    print(parse(" ".join(sys.argv[1:]) or sys.stdin.read()))
