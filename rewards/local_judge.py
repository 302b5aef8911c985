"""A transformers causal LM as the judge: yes/no per criterion from one forward pass per batch, no generation.

    torchrun grpo/train.py --judge local        # the policy's own base weights (LoRA adapter off) grade its samples

For each (question, completion, criterion) the prompt (rewards/judge_prompts.py, one rubric item) ends where the
answer starts; verdict = logit("yes") > logit("no") at that next-token position, and P(yes | yes or no) is kept in
`last_probs`. With a peft model and disable_adapter=True the grading runs under `model.disable_adapter()`, so on
one GPU the judge is the frozen base model and costs no extra weight memory.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from rewards import judge_prompts as P
from rewards.judge_base import Judge
from rewards.rubric import Rubric

ASK = "Does the response meet this rubric item? Answer with one word: yes or no."


class LocalJudge(Judge):
    def __init__(self, model, tokenizer, batch_size: int = 8, disable_adapter: bool = True, max_length: int = 4096,
                 answer_words: tuple[str, str] = ("yes", "no")):
        super().__init__()
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length
        self.disable_adapter = disable_adapter
        self.yes_id, self.no_id = (self._single_token(w) for w in answer_words)
        self.last_probs: list[list[float]] = []  # P(yes | yes or no) per criterion, per item of the last call

    def _single_token(self, word: str) -> int:
        for form in (word, " " + word):
            ids = self.tokenizer.encode(form, add_special_tokens=False)
            if len(ids) == 1:
                return ids[0]
        raise ValueError(f"local judge: answer word {word!r} is not a single token of this tokenizer; "
                         f"pass answer_words=(...) that are")

    def prompt(self, question: list[dict], completion: str, criterion) -> str:
        """The full prompt text for one criterion; the next token is the answer."""
        messages = P.grading_messages(question, completion, [(1, criterion.points, criterion.text)], "per_criterion")
        system = messages[0]["content"].rsplit("\nReply with only", 1)[0]  # yes/no here, not JSON
        user = messages[1]["content"] + "\n\n" + ASK
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                tokenize=False, add_generation_prompt=True, enable_thinking=False)
        return f"{system}\n\n{user}\nAnswer:"

    @torch.inference_mode()
    def _yes_no_logits(self, texts: list[str]) -> torch.Tensor:
        """(N, 2) fp32 logits of (yes, no) at the position after each text."""
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            # left-truncate (keep the criterion and the answer cue), left-pad by hand: no tokenizer state touched
            seqs = [self.tokenizer.encode(t, add_special_tokens=False)[-self.max_length:]
                    for t in texts[start:start + self.batch_size]]
            T = max(len(s) for s in seqs)
            ids = torch.tensor([[0] * (T - len(s)) + s for s in seqs], device=device)  # (b, T)
            mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], device=device)  # (b, T)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T) positions restart at each sequence's first token
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            out.append(logits[:, -1, [self.yes_id, self.no_id]].float())  # (b, 2)
        return torch.cat(out)  # (N, 2)

    def _adapter_off(self):
        if self.disable_adapter and hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def verdicts(self, items: Sequence[tuple]) -> tuple[list[list[bool]], list[list[float]]]:
        """(verdicts, P(yes | yes or no)) for items = [(question, completion, rubric)], all criteria batched."""
        flat = [(i, self.prompt(q, c, crit)) for i, (q, c, rubric) in enumerate(items) for crit in rubric]
        was_training = self.model.training
        self.model.eval()  # no LoRA/attention dropout while judging
        try:
            with self._adapter_off():
                pair = self._yes_no_logits([t for _, t in flat]) if flat else torch.zeros(0, 2)  # (N, 2)
        finally:
            self.model.train(was_training)
        met = (pair[:, 0] > pair[:, 1]).tolist()  # host sync: verdicts leave the GPU here
        prob = torch.softmax(pair, dim=-1)[:, 0].tolist()
        verdicts, probs = [[] for _ in items], [[] for _ in items]
        for (i, _), m, p in zip(flat, met, prob):
            verdicts[i].append(m)
            probs[i].append(p)
        self._stats["calls"] += -(-len(flat) // self.batch_size)  # forward passes
        return verdicts, probs

    async def _grade(self, question: list, completion: str, rubric: Rubric) -> list:
        verdicts, self.last_probs = self.verdicts([(question, completion, rubric)])
        return verdicts[0]

    async def grade_many(self, items):
        """All criteria of all items in batches of `batch_size` (rather than one item at a time)."""
        verdicts, self.last_probs = self.verdicts(list(items))
        self._stats["criteria"] += sum(map(len, verdicts))
        return verdicts
