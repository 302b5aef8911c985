"""Rollout: sampling filters, the keyed Gumbel sampler, masks, and batch-invariant generation."""
import math

import pytest
import torch

from grpo.rollout import completion_masks, filter_logits, generate, gumbel_noise


def _kept(logp):
    return torch.isfinite(logp[0]).nonzero().flatten().tolist()


def test_filters_match_hand_computed_sets():
    p = torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]])
    logits = p.log()
    # top-k 2 keeps the two largest
    assert _kept(filter_logits(logits, temperature=1, top_k=2, top_p=1, min_p=0)) == [0, 1]
    # top-p 0.8: cumulative mass before each token 0, .5, .75, .9 → keep while < 0.8 → tokens 0,1,2
    assert _kept(filter_logits(logits, temperature=1, top_k=0, top_p=0.8, min_p=0)) == [0, 1, 2]
    # min-p 0.2: keep p >= 0.2 * 0.5 = 0.1 → tokens 0,1,2
    assert _kept(filter_logits(logits, temperature=1, top_k=0, top_p=1, min_p=0.2)) == [0, 1, 2]
    # temperature 2 keeps all and renormalises p^(1/2)
    out = filter_logits(logits, temperature=2, top_k=0, top_p=1, min_p=0).exp()
    ref = p.sqrt() / p.sqrt().sum()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)


def test_top_p_sees_the_distribution_renormalised_after_top_k():
    p = torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]])
    # top-k 3 renormalises to .5/.9, .25/.9, .15/.9 = .556, .278, .167; mass before each: 0, .556, .833, so top-p .8
    # keeps two. On the unrenormalised mass (0, .5, .75) it would keep three: the bug this pins.
    assert _kept(filter_logits(p.log(), temperature=1, top_k=3, top_p=0.8, min_p=0)) == [0, 1]
    out = filter_logits(p.log(), temperature=1, top_k=3, top_p=0.8, min_p=0).exp()
    torch.testing.assert_close(out, torch.tensor([[2 / 3, 1 / 3, 0, 0, 0]]), rtol=1e-6, atol=0)  # renormalised


def hf_kept(logits, temperature, top_k, top_p, min_p):
    """The tokens transformers' own warpers keep, chained in the order of GenerationMixin._get_logits_processor."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    procs = [TemperatureLogitsWarper(temperature)]
    procs += [TopKLogitsWarper(top_k)] if top_k else []
    procs += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    procs += [MinPLogitsWarper(min_p)] if min_p > 0 else []
    return torch.isfinite(LogitsProcessorList(procs)(None, logits.float().clone()))


@pytest.mark.parametrize("V,rows", [(1823, 64), (151_936, 4)])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [(1.0, 50, 0.9, 0.0), (0.7, 0, 0.8, 0.0),
                                                           (1.3, 200, 0.95, 0.05), (0.3, 5, 0.5, 0.0),
                                                           (2.0, 0, 1.0, 0.1), (1.0, 1000, 0.6, 0.0)])
def test_filters_equal_hf_warpers(V, rows, ties, temperature, top_k, top_p, min_p):
    """Same kept set as HF's TopK → TopP → MinP warpers; with ties, HF keeps an arbitrary part of the group tied at
    the top-p cut and we keep all of it, so there the extras must all equal HF's smallest kept value."""
    g = torch.Generator().manual_seed(V + 7 * ties)
    x = torch.randn(rows, V, generator=g) * 2.5
    if ties:
        x = (x * 2).round() / 2                                        # ~30 distinct values: big tie groups
    hf = hf_kept(x, temperature, top_k, top_p, min_p)
    ours = torch.isfinite(filter_logits(x, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    assert not (hf & ~ours).any()                                      # never drops a token HF keeps
    if not ties:
        assert torch.equal(ours, hf)
        return
    hf_min = x.masked_fill(~hf, float("inf")).amin(-1, keepdim=True)   # (rows, 1)
    extra = ours & ~hf
    assert torch.equal(extra, extra & (x == hf_min))


def test_keyed_gumbel_sampling_follows_softmax():
    """argmax(log p + Gumbel) over many sequence ids is distributed as p (chi-square test, fixed seed)."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.07, 0.03])
    n = 40_000
    seq = torch.arange(n)
    draws = (p.log()[None] + gumbel_noise(seed=7, seq_ids=seq, t=3, vocab=5)).argmax(-1)
    counts = torch.bincount(draws, minlength=5).double()
    chi2 = (((counts - n * p.double()) ** 2) / (n * p.double())).sum().item()
    assert chi2 < 18.47  # 99.9 % quantile of chi-square with 4 degrees of freedom


def test_noise_depends_only_on_key():
    a = gumbel_noise(3, torch.tensor([5, 9]), 2, 11)
    b = gumbel_noise(3, torch.tensor([9]), 2, 11)
    assert torch.equal(a[1], b[0])                      # same (seed, seq, t): same noise, whatever the batch
    assert not torch.equal(a[0], a[1])                  # different sequences differ
    assert not torch.equal(a, gumbel_noise(3, torch.tensor([5, 9]), 3, 11))  # different positions differ
    assert torch.isfinite(a).all()


def test_completion_masks():
    eos = torch.tensor([9])
    ids = torch.tensor([[1, 2, 9, 0, 0],    # EOS at 2: mask through it
                        [1, 2, 3, 4, 5],    # no EOS: truncated, all valid
                        [9, 9, 1, 1, 1]])   # EOS first: one valid token
    mask, truncated = completion_masks(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


@pytest.fixture(scope="module")
def tiny():
    from grpo.model import build_tiny, load_model
    return load_model(build_tiny(), device=torch.device("cpu"))


def test_generation_is_batch_invariant(tiny):
    """A sequence gets the same tokens alone or inside a batch with other (differently padded) prompts."""
    model, tok = tiny
    short = [{"role": "user", "content": "Is aspirin safe?"}]
    long = [{"role": "user", "content": "My blood pressure is high after exercise and I feel palpitations, why?"}]
    kw = dict(num_generations=3, max_new_tokens=12, min_p=0.05, seed=11)
    together = generate(model, tok, [long, short], **kw, seq_offset=0)
    alone = generate(model, tok, [short], **kw, seq_offset=3)  # rows 3..5 of the batch above
    assert together.texts[3:] == alone.texts
    n = alone.completion_mask.shape[1]
    assert torch.equal(together.completion_ids[3:, :n][alone.completion_mask.bool()],
                       alone.completion_ids[alone.completion_mask.bool()])
    assert together.prompt_ids.shape[0] == 6 and together.completion_mask.shape == together.completion_ids.shape


def test_generation_matches_a_full_forward(tiny):
    """KV-cached decoding scores each sampled token as a full forward over the finished sequence does (left padding)."""
    from grpo.logprobs import completion_logprobs
    model, tok = tiny
    prompts = [[{"role": "user", "content": "What is a statin?"}],
               [{"role": "user", "content": "Chest pain at rest with sweating: what should I do now?"}]]
    roll = generate(model, tok, prompts, num_generations=2, max_new_tokens=10, temperature=0)
    logp = completion_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_mask, impl="reference")
    # greedy decoding picks each row's argmax, so every chosen token must be the full forward's top-1
    full = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask,
                 position_ids=(roll.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
    T = roll.completion_ids.shape[1]
    full = full[:, -T - 1:-1]                                   # (S, T) positions that predict completion tokens
    top = full.log_softmax(-1).max(-1).values
    valid = roll.completion_mask.bool()
    torch.testing.assert_close(logp[valid], top[valid], rtol=0, atol=1e-4)
    assert math.isclose(float(logp[~valid].abs().sum()), 0.0)


def test_chunked_rollout_draws_the_same_samples(tiny):
    """rollout_batch bounds the KV cache without changing what is sampled."""
    model, tok = tiny
    prompts = [[{"role": "user", "content": "Do statins cause muscle pain?"}], [{"role": "user", "content": "What is AFib?"}]]
    kw = dict(num_generations=3, max_new_tokens=10, seed=5)
    whole = generate(model, tok, prompts, **kw)
    chunked = generate(model, tok, prompts, **kw, rollout_batch=4)
    assert whole.texts == chunked.texts
    assert torch.equal(whole.completion_mask, chunked.completion_mask)


def test_concat_groups_repads_and_keeps_log_probs(tiny):
    """Groups taken from two rollout batches of different prompt/completion lengths score exactly as before."""
    from grpo.logprobs import completion_logprobs
    from grpo.rollout import concat_groups
    model, tok = tiny
    a = generate(model, tok, [[{"role": "user", "content": "What is a statin?"}],
                              [{"role": "user", "content": "Why do ankles swell in heart failure at night?"}]],
                 num_generations=2, max_new_tokens=6, seed=1)
    b = generate(model, tok, [[{"role": "user", "content": "Define angina briefly please."}]],
                 num_generations=2, max_new_tokens=9, seed=2)
    merged = concat_groups([(a, 1), (b, 0)], tok.pad_token_id)
    assert merged.texts == a.texts[2:4] + b.texts[0:2]
    lp = lambda r: completion_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask, impl="reference")  # noqa: E731
    with torch.no_grad():
        got, la, lb = lp(merged), lp(a), lp(b)
    ta, tb = la.shape[1], lb.shape[1]
    torch.testing.assert_close(got[:2, :ta], la[2:4], rtol=0, atol=2e-5)
    torch.testing.assert_close(got[2:, :tb], lb[0:2], rtol=0, atol=2e-5)
    assert merged.completion_mask[:2, ta:].sum() == 0
