"""Our GRPO step vs TRL's GRPOTrainer on identical work, side by side in one process (CPU).

    pip install -e '.[dev,bench]'                       # adds trl (bench only: nothing else imports it)
    python bench/bench_trl.py                           # 8 prompts × 8 samples × 64 tokens, LoRA r8, β 0.04, ~3 min
    python bench/bench_trl.py --repeats 3 --tokens 16   # a quick look

What is identical on both sides
  model      the same tiny Qwen3 dir (grpo.model.build_tiny), fp32, SDPA attention, loaded twice (one copy each)
  prompts    the first --prompts of the bundled demo (data.bundled_demo_path()), system prompt + question through the
             same chat template; the same 8 every step (TRL: shuffle_dataset=False, an 8-row dataset)
  tokens     exactly --tokens new tokens per sample on both: TRL generates with min_new_tokens = max_new_tokens (EOS
             suppressed until the cap), ours decodes with an empty stop set (the --rollout engine's sample_tokens(eos=[]), as
             bench/throughput.py does), so every completion is full length on both and the token counts are equal
  sampling   temperature 1, no top-k / top-p / min-p
  LoRA       r 8, alpha 16, dropout 0, "all-linear" (q,k,v,o,gate,up,down; peft excludes the tied lm_head)
  loss       β 0.04 (reference = adapter off on both), ε 0.2, μ = 1 (no old-log-prob pass on either: ratio ≡ 1),
             "grpo" normalisation (per-sequence token mean, then mean) on both, group-scaled advantages
  update     AdamW, lr 1e-5, grad clip 1.0, one micro-batch of all B·G sequences, no gradient checkpointing and no
             bf16 autocast (TRL defaults both on; they are switched off so both sides do the same fp32 work)
  reward     a cheap deterministic function of the decoded text (distinct-word fraction), the same on both

How it is timed. TRL's trainer.train() runs warmup + repeats steps; a TrainerCallback marks on_step_begin/on_step_end
(the whole step: generation, scoring, reference pass, forward, backward, clip, AdamW) and, in on_step_end, runs our
step right away, so the two alternate A B A B… under the same load (the first --warmup pairs are not counted).
Phases: rollout = TRL's `_generate` (tokenise, model.generate, decode) | ours: tokenise, sample_tokens, decode;
reward = TRL's `_calculate_rewards` | ours: the reward call; train = step − rollout − reward (advantages, reference
log-probs, policy log-probs + entropy, loss, backward, clip, AdamW, and each side's bookkeeping). Our side is the
trainer's own step function, `grpo.step.grpo_step`, with a draw that decodes the fixed prompts.
The TRL phase timers wrap bound methods on the trainer instance (no TRL code is changed). torch.set_num_threads is set
once for the process, so both sides get the same threads. Prints a table of medians and spreads (min–max) and, as
its last line, one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without `pip install -e`

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from data import bundled_demo_path, load_samples  # noqa: E402
from data.format import to_messages  # noqa: E402
from grpo.config import TrainConfig  # noqa: E402
from grpo.dist import parallelize  # noqa: E402
from grpo.model import Reference, add_lora, build_tiny, load_model  # noqa: E402
from grpo.rollout import Rollouts, completion_masks, make_engine  # noqa: E402
from grpo.step import TRAIN_PHASES, Clock, Learner, grpo_step  # noqa: E402

PHASES = ("rollout", "reward", "train", "step")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="B prompts per step")
    ap.add_argument("--G", type=int, default=8, help="samples per prompt")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per sample (always decoded in full)")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL_k3 coefficient (> 0: a reference pass on both)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--repeats", type=int, default=6, help="measured step pairs (TRL, ours)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured step pairs first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    ap.add_argument("--logprob-impl", default="fused", help="grpo.logprobs impl for our step")
    ap.add_argument("--rollout", default="static", choices=["static", "eager"],
                    help="our decode engine (grpo/rollout.py ENGINES): static = the trainer's default, eager = reference")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead: time our step's train phases N times on one rollout, with a torch.profiler table")
    a = ap.parse_args(argv)
    if a.tokens < 2 or a.G < 2:
        ap.error("--tokens and --G must be >= 2")
    return a


def distinct_word_reward(texts: list[str]) -> list[float]:
    """Cheap and deterministic: the fraction of distinct words in each text (0 for an empty one)."""
    return [len(set(w)) / len(w) if (w := t.split()) else 0.0 for t in texts]


# ------------------------------------------------------------------------------------------------------ our step
class Ours:
    """Our policy, reference and optimizer, stepped by the trainer's own step function (grpo.step.grpo_step)."""

    def __init__(self, model_dir: str, prompts: list, a):
        self.a = a
        model, self.tok = load_model(model_dir, device=torch.device("cpu"), dtype=torch.float32)
        self.model = add_lora(model, r=a.lora_r, alpha=2 * a.lora_r)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        reference = Reference(self.model, keep_copy=False)  # LoRA: adapter off, as TRL does
        self.learner = Learner(parallelize(self.model, "none"), reference, optimizer, params)
        self.cfg = TrainConfig(prompts_per_step=a.prompts, num_generations=a.G, max_new_tokens=a.tokens, beta=a.beta,
                               lr=a.lr, eps_low=0.2, eps_high=0.2, grad_clip=1.0, temperature=1.0, num_iterations=1,
                               micro_batch=0, loss="grpo", adv_scale="group", logprob_impl=a.logprob_impl,
                               reward="distinct_words", log_rewards="")
        self.texts = [self.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        self.sample_tokens = make_engine(a.rollout).sample_tokens  # (S, P) → (S, T), the engine the trainer uses
        self.last = None  # the last draw, for --profile

    def draw(self, step: int):
        """grpo_step's draw: what the engine's generate does, with an empty stop set so every sample has T tokens,
        then the reward of the decoded text."""
        a, tok = self.a, self.tok
        B, G, T = a.prompts, a.G, a.tokens

        def draw(clock):
            with clock("rollout"):
                enc = tok(self.texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
                prompt_ids = enc["input_ids"].repeat_interleave(G, 0)                  # (B*G, P)
                prompt_mask = enc["attention_mask"].repeat_interleave(G, 0)            # (B*G, P)
                no_eos = torch.tensor([], dtype=torch.long)
                completion = self.sample_tokens(self.model, prompt_ids, prompt_mask, eos=no_eos, pad=tok.pad_token_id,
                                                max_new_tokens=T, temperature=1.0, seed=step, seq_offset=0)  # (B*G, T)
                cmask, _ = completion_masks(completion, no_eos)                        # (B*G, T) all ones
                texts = tok.batch_decode(completion.tolist(), skip_special_tokens=True)  # sync: ids to host
            with clock("judge"):
                rewards = torch.tensor(distinct_word_reward(texts), dtype=torch.float32).view(B, G)  # (B, G)
            roll = Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion,
                            completion_mask=cmask, texts=texts, truncated=torch.ones(B * G, dtype=torch.bool),
                            num_generations=G)
            self.last = (roll, {"distinct_words": rewards}, {"rollout_tokens": cmask.sum()})
            return self.last

        return draw

    def step(self, step: int) -> dict:
        """One GRPO step through grpo_step; seconds per phase (reward = the reward call; advantages count in train)."""
        clock = Clock()
        t0 = time.perf_counter()
        done = grpo_step(self.draw(step), self.learner, self.cfg, clock, pad_id=self.tok.pad_token_id)
        wall = time.perf_counter() - t0
        if done.no_signal:  # we would skip the update TRL still runs on zero advantages: not the same work
            raise SystemExit(f"step {step}: every group's reward is flat, so our step trained nothing while TRL's "
                             f"does; not comparable — use more --tokens")
        rollout, reward = clock.time["rollout"], clock.time["judge"]
        return {"rollout": rollout, "reward": reward, "train": wall - rollout - reward, "step": wall,
                "tokens": int(done.num_tokens), "loss": done.metrics["loss/total"]}


# ------------------------------------------------------------------------------------------------------ TRL side
def run_trl(model_dir: str, prompts: list, ours: Ours, a) -> tuple[list, list]:
    """trainer.train() for warmup + repeats steps; our step runs inside on_step_end. Returns (trl rows, our rows)."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    B, G, T = a.prompts, a.G, a.tokens
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"

    def reward_fn(prompts, completions, **kw):  # conversational dataset: completions are [{"role", "content"}] lists
        return distinct_word_reward([c[-1]["content"] if isinstance(c, list) else c for c in completions])

    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    args = GRPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, log_completions=False,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
        max_steps=a.warmup + a.repeats, per_device_train_batch_size=B * G, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=T, generation_kwargs={"min_new_tokens": T},
        temperature=1.0, top_k=0, top_p=1.0, beta=a.beta, epsilon=0.2, num_iterations=1, loss_type="grpo",
        scale_rewards="group", learning_rate=a.lr, weight_decay=0.0, max_grad_norm=1.0, shuffle_dataset=False,
        disable_dropout=True, model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
    )
    lora = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    data = datasets.Dataset.from_list([{"prompt": m} for m in prompts])
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_fn, args=args, train_dataset=data,
                          processing_class=tok, peft_config=lora)

    phase = {"rollout": 0.0, "reward": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phase[name] += time.perf_counter() - t0
        return wrapper

    trainer._generate = timed("rollout", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trl_rows, our_rows = [], []

    class SideBySide(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            phase.update(rollout=0.0, reward=0.0)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t0
            trl_rows.append({"rollout": phase["rollout"], "reward": phase["reward"],
                             "train": dt - phase["rollout"] - phase["reward"], "step": dt})
            our_rows.append(ours.step(state.global_step))
            print(f"pair {state.global_step:2d}/{args.max_steps} | TRL {dt:6.2f} s | ours {our_rows[-1]['step']:6.2f} s "
                  f"| threads {torch.get_num_threads()}", flush=True)

    trainer.add_callback(SideBySide())
    trainer.train()
    # TRL logs its own completion length: check both sides produced B·G·T tokens
    lens = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return trl_rows, our_rows, lens


def profile_train(ours: Ours, a) -> None:
    """--profile N: one rollout, then grpo_step's train phases N times on that same batch (median s), and once under
    torch.profiler (table by self CPU time, seconds per phase)."""
    for i in range(a.warmup + 1):
        ours.step(i)
    batch = ours.last
    again = lambda clock: batch  # noqa: E731  the same rollout every time: only the train phases vary
    times = []
    for _ in range(a.profile):
        clock = Clock()
        grpo_step(again, ours.learner, ours.cfg, clock, pad_id=ours.tok.pad_token_id)
        times.append(sum(clock.time[p] for p in TRAIN_PHASES))
    clock = ProfiledClock()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        grpo_step(again, ours.learner, ours.cfg, clock, pad_id=ours.tok.pad_token_id)
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25))
    ranges = {e.key[6:]: e.cpu_time_total / 1e6 for e in table if e.key.startswith("train/")}
    print("profiled run: " + ", ".join(f"{k} {v:.3f} s" for k, v in ranges.items()))
    print(f"train phases: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})")
    print(json.dumps({"bench": "bench_trl.profile", "threads": a.threads, "load_1min": round(os.getloadavg()[0], 2),
                      "train_s": statistics.median(times), "profiled_s": ranges}))


class ProfiledClock(Clock):
    """A Clock whose phases are also torch.profiler ranges (train/<phase>)."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        with record_function(f"train/{name}"), super().__call__(name):
            yield


# ------------------------------------------------------------------------------------------------------ report
def summarise(rows: list) -> dict:
    return {p: {"median": statistics.median(r[p] for r in rows), "min": min(r[p] for r in rows),
                "max": max(r[p] for r in rows)} for p in PHASES}


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    model_dir = build_tiny()
    samples = load_samples(bundled_demo_path())
    if a.prompts > len(samples):
        raise SystemExit(f"--prompts {a.prompts} > {len(samples)} demo prompts: pass --prompts {len(samples)} or less")
    prompts = [to_messages(s) for s in samples[:a.prompts]]
    torch.manual_seed(0)
    ours = Ours(model_dir, prompts, a)
    if a.profile:
        return profile_train(ours, a)
    import trl
    trl_rows, our_rows, trl_lens = run_trl(model_dir, prompts, ours, a)
    trl_rows, our_rows = trl_rows[a.warmup:], our_rows[a.warmup:]
    s_trl, s_our = summarise(trl_rows), summarise(our_rows)
    ratios = [o["step"] / t["step"] for o, t in zip(our_rows, trl_rows)]  # per pair: robust to drift between pairs
    tokens = a.prompts * a.G * a.tokens

    print(f"\nGRPO step, {a.prompts} prompts × {a.G} samples × {a.tokens} tokens, LoRA r{a.lora_r}, β {a.beta}, "
          f"{a.repeats} pairs (after {a.warmup} warmup), {a.threads} threads, torch {torch.__version__}, "
          f"trl {trl.__version__}, load {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<10}{'TRL s (min–max)':>22}{'ours s (min–max)':>22}{'ours / TRL':>12}")
    for p in PHASES:
        t, o = s_trl[p], s_our[p]
        print(f"{p:<10}{t['median']:>9.3f} ({t['min']:.3f}–{t['max']:.3f}){o['median']:>9.3f} "
              f"({o['min']:.3f}–{o['max']:.3f}){o['median'] / max(t['median'], 1e-9):>11.2f}×")
    print(f"per-pair step ratio ours/TRL: median {statistics.median(ratios):.2f}× (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); tokens/step: ours {our_rows[-1]['tokens']}, TRL "
          f"{round(trl_lens[-1] * a.prompts * a.G) if trl_lens else 'n/a'} (want {tokens})")
    print(json.dumps({
        "bench": "bench_trl", "prompts": a.prompts, "G": a.G, "tokens": a.tokens, "lora_r": a.lora_r, "beta": a.beta,
        "repeats": a.repeats, "threads": a.threads, "torch": torch.__version__, "trl": trl.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "load_1min": round(os.getloadavg()[0], 2),
        "trl_s": s_trl, "ours_s": s_our, "ratio_step_median": statistics.median(ratios),
        "ratio_step_min": min(ratios), "ratio_step_max": max(ratios),
        "trl_completion_len": trl_lens[-1] if trl_lens else None, "ours_completion_len": our_rows[-1]["tokens"] / (a.prompts * a.G),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }))


if __name__ == "__main__":
    main()
