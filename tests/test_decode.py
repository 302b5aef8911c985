"""The static-cache engine (grpo/decode.py) against the eager reference (grpo/rollout.py) and HF's own forward."""
import pytest
import torch

from grpo.decode import Decoder, KVCache, Sampling, StaticEngine, decode_step, prefill, read_weights
from grpo.rollout import ENGINES, EagerEngine, make_engine

SHORT = [{"role": "user", "content": "Is aspirin safe?"}]
MID = [{"role": "user", "content": "What does a statin do to cholesterol?"}]
LONG = [{"role": "user", "content": "My blood pressure is high after exercise and I feel palpitations at night, why?"}]


@pytest.fixture(scope="module")
def tiny():
    from grpo.model import build_tiny, load_model
    return load_model(build_tiny(), device=torch.device("cpu"))


def _same(a, b):
    assert a.completion_ids.shape == b.completion_ids.shape
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.truncated, b.truncated)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and a.texts == b.texts


SAMPLING = [dict(temperature=0.0), dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.8, min_p=0.05),
            dict(top_k=30, top_p=0.9, min_p=0.02)]


@pytest.mark.parametrize("kw", SAMPLING)
def test_static_engine_draws_the_eager_tokens(tiny, kw):
    """Three prompt lengths (left padding), chunks that split a group, small buckets so runs cross bucket edges."""
    model, tok = tiny
    args = dict(num_generations=3, max_new_tokens=16, seed=3, seq_offset=5, rollout_batch=4, **kw)
    ref = EagerEngine().generate(model, tok, [LONG, SHORT, MID], **args)
    got = StaticEngine(attn_bucket=8, sync_every=5).generate(model, tok, [LONG, SHORT, MID], **args)
    _same(ref, got)


def test_early_stop_and_trim_match_eager(tiny):
    """With a frequent token as EOS rows end early and at different steps; the static loop checks only every k tokens
    yet returns exactly the eager loop's length, pads and masks."""
    model, tok = tiny
    enc = tok([tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in (LONG, SHORT)],
              return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(2, 0), enc["attention_mask"].repeat_interleave(2, 0)
    kw = dict(pad=tok.pad_token_id, max_new_tokens=30, temperature=1.0, seed=9, seq_offset=0)
    free = EagerEngine().sample_tokens(model, ids, mask, eos=torch.tensor([], dtype=torch.long), **kw)
    eos = free[torch.arange(4), torch.tensor([3, 8, 13, 19])].unique()  # row r has one of these by step 3, 8, 13, 19
    ref = EagerEngine().sample_tokens(model, ids, mask, eos=eos, **kw)
    ends = torch.isin(ref, eos).long().argmax(-1)
    assert ref.shape[1] < 30 and torch.isin(ref, eos).any(-1).all() and len(set(ends.tolist())) > 1  # a real case
    for k in (0, 1, 7, 64):
        got = StaticEngine(sync_every=k, attn_bucket=16).sample_tokens(model, ids, mask, eos=eos, **kw)
        assert torch.equal(got, ref), k


def test_decode_logits_match_hf_full_forward(tiny):
    """Teacher-forced: prefill + decode_step logits equal HF's full forward at each position (left-padded rows)."""
    model, tok = tiny
    enc = tok([tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in (LONG, SHORT)],
              return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cont = torch.randint(0, len(tok), (2, 6), generator=torch.Generator().manual_seed(0))  # (S, 6) forced tokens
    full_ids, full_mask = torch.cat([ids, cont], 1), torch.cat([mask, torch.ones_like(cont)], 1)
    with torch.no_grad():
        ref = model(input_ids=full_ids, attention_mask=full_mask,
                    position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits        # (S, P+6, V)
        w = read_weights(model)
        P = ids.shape[1]
        cache = KVCache(w, 2, P + 8)
        got = [prefill(w, cache, ids, mask)]
        lens = mask.sum(-1)
        for j in range(5):
            got.append(decode_step(w, cache, cont[:, j], lens + j, kv_len=cache.t_max))
    got = torch.stack(got, 1)                                                            # (S, 6, V)
    torch.testing.assert_close(got, ref[:, P - 1:P + 5], rtol=0, atol=2e-5)


def test_static_engine_is_batch_invariant(tiny):
    """A sequence gets the same tokens alone or in a batch with differently padded prompts (resume, 2 ranks)."""
    model, tok = tiny
    eng = StaticEngine(attn_bucket=32)
    kw = dict(num_generations=3, max_new_tokens=16, min_p=0.05, seed=11)
    together = eng.generate(model, tok, [LONG, SHORT], **kw, seq_offset=0)
    alone = eng.generate(model, tok, [SHORT], **kw, seq_offset=3)
    assert together.texts[3:] == alone.texts


def _lora(model, seed=0):
    import copy

    from grpo.model import add_lora
    peft_model = add_lora(copy.deepcopy(model), r=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:  # peft starts B at 0 (adapter = no-op); make it a real delta
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft_model.eval()


@pytest.mark.parametrize("lora", ["merge", "adapter"])
def test_lora_rollouts_match_eager_and_leave_the_base_bit_identical(tiny, lora):
    model, tok = tiny
    pm = _lora(model)
    base = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" not in n}
    kw = dict(num_generations=2, max_new_tokens=10, temperature=1.0, top_k=40, seed=1, rollout_batch=3)
    eng = StaticEngine(lora=lora, attn_bucket=16)
    for i in range(2):  # N rollouts: the base weights (and so the reference policy) must not move by one bit
        _same(EagerEngine().generate(pm, tok, [LONG, SHORT], **kw, seq_offset=10 * i),
              eng.generate(pm, tok, [LONG, SHORT], **kw, seq_offset=10 * i))
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    if lora == "merge":  # the merged buffers really hold W + s·B·A, not W (else the test above proves nothing)
        w = read_weights(pm, lora="merge")
        q = pm.get_base_model().model.layers[0].self_attn.q_proj
        assert not torch.equal(w.layers[0].q.weight, q.base_layer.weight) and not w.layers[0].q.loras
    # with the adapter disabled (the reference policy) the engine samples the base model's tokens
    with pm.disable_adapter():
        _same(eng.generate(pm, tok, [SHORT], **kw), EagerEngine().generate(model, tok, [SHORT], **kw))


def test_full_fine_tuning_sees_every_update(tiny):
    """The engine reads the model's own tensors: after an optimizer step it samples the new policy, like eager."""
    import copy
    model, tok = tiny
    m = copy.deepcopy(model)
    eng = StaticEngine(attn_bucket=16)
    kw = dict(num_generations=2, max_new_tokens=12, seed=4)
    before = eng.generate(m, tok, [MID], **kw)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    ids = torch.cat([before.prompt_ids, before.completion_ids], 1)
    m.train()
    (-m(input_ids=ids, labels=ids).loss).backward()  # a big step away from what it just sampled
    opt.step()
    m.eval()
    after = eng.generate(m, tok, [MID], **kw)
    _same(after, EagerEngine().generate(m, tok, [MID], **kw))
    assert not torch.equal(before.completion_ids, after.completion_ids)


def _mutated_storages(fn):
    """Run fn under a dispatch mode; return the storages of every tensor an op wrote in place or out=."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Writes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ptrs = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for i, a in enumerate(func._schema.arguments):
                if a.alias_info is not None and a.alias_info.is_write:
                    t = kwargs.get(a.name, args[i] if i < len(args) else None)
                    if isinstance(t, torch.Tensor):
                        self.ptrs.add(t.untyped_storage().data_ptr())
            return func(*args, **kwargs)

    with Writes() as mode:
        fn()
    return mode.ptrs


def _decoder(tiny, bucket=8):
    model, tok = tiny
    enc = tok([tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in (LONG, SHORT)],
              return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    w = read_weights(model)
    dec = Decoder(w, 2, enc["input_ids"].shape[1], 20, eos=torch.tensor([tok.eos_token_id]), pad=tok.pad_token_id,
                  sampling=Sampling(1.0, 0.9, 50, 0.0), attn_bucket=bucket)
    return dec, enc["input_ids"], enc["attention_mask"]


def test_token_step_writes_only_preallocated_buffers_with_fixed_shapes(tiny):
    """What makes CUDA-graph capture correct: a step writes only the decoder's own buffers (never the weights, never
    a tensor made outside), and its buffers keep their storage and shape across steps."""
    dec, ids, mask = _decoder(tiny)
    with torch.no_grad():
        dec.start(ids, mask, seed=0, seq_offset=0)
        bufs = {"k": dec.cache.k, "v": dec.cache.v, "tok": dec.tok, "lens": dec.lens, "t": dec.t, "done": dec.done,
                "finish": dec.finish, "out": dec.out}
        layout = {n: (b.untyped_storage().data_ptr(), b.shape) for n, b in bufs.items()}
        own = {b.untyped_storage().data_ptr() for b in bufs.values()}
        weights = {p.untyped_storage().data_ptr() for p in tiny[0].parameters()}
        P = ids.shape[1]
        for t in range(1, 6):
            dec.kv_len = min(-(-(P + t) // dec.bucket) * dec.bucket, dec.cache.t_max)
            written = _mutated_storages(dec.token_step)
            assert written <= own and not written & weights, t
            assert {n: (b.untyped_storage().data_ptr(), b.shape) for n, b in bufs.items()} == layout
        assert int(dec.t) == 6 and torch.equal(dec.lens, mask.sum(-1) + 5)


def test_replaying_a_step_from_saved_buffers_repeats_it(tiny):
    """A captured graph replays the step on whatever the buffers hold: restoring them and stepping again gives the
    same token and cache bits (no hidden Python state such as a step counter outside the buffers)."""
    dec, ids, mask = _decoder(tiny)
    with torch.no_grad():
        dec.start(ids, mask, seed=2, seq_offset=4)
        dec.kv_len = dec.cache.t_max
        state = [dec.tok, dec.lens, dec.t, dec.done, dec.finish, dec.out]
        saved = [x.clone() for x in state]
        dec.token_step()
        first = [x.clone() for x in state] + [dec.cache.k.clone()]
        dec.token_step()  # move on, then rewind the buffers as a replay would find them
        for x, y in zip(state, saved):
            x.copy_(y)
        dec.token_step()
        for x, y in zip(state, first):
            assert torch.equal(x, y)
        filled = torch.arange(dec.cache.t_max)[None] < dec.lens[:, None]  # (S, T_max) slots written so far
        assert torch.equal(dec.cache.k[:, filled], first[-1][:, filled])


def test_token_step_traces_as_one_graph(tiny):
    """torch.compile(fullgraph=True) fails on any host sync or data-dependent Python branch in the step; compiled
    (dynamo, eager backend: the inductor C++ compile is too slow for these 2-core CI machines) it draws the same tokens."""
    model, tok = tiny
    dec, ids, mask = _decoder(tiny)
    compiled = torch.compile(dec.token_step, fullgraph=True, backend="eager")
    with torch.no_grad():
        got = dec.run(ids, mask, seed=5, seq_offset=0, sync_every=4, step=lambda _: compiled())
    eager = EagerEngine().sample_tokens(model, ids, mask, eos=torch.tensor([tok.eos_token_id]), pad=tok.pad_token_id,
                                        max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=5)
    assert torch.equal(got, eager)


def test_registry():
    assert {"eager", "static"} <= set(ENGINES)
    assert make_engine("static", sync_every=3).name == "static" and make_engine("eager").name == "eager"
    with pytest.raises(ValueError, match="unknown rollout engine 'vllm'; choose one of eager, local, server, static"):
        make_engine("vllm")
    with pytest.raises(ValueError, match="lora must be"):
        read_weights(torch.nn.Module(), lora="fused")


def test_concat_groups_carries_sampler_logp():
    """A served engine's own log-probs travel with their rows through DAPO's regrouping, padded with 0 like the mask."""
    from grpo.rollout import Rollouts, concat_groups

    def roll(T, base):
        ids = torch.arange(4 * T).view(4, T)
        return Rollouts(ids[:, :2], torch.ones(4, 2, dtype=torch.long), ids, torch.ones(4, T, dtype=torch.long),
                        ["x"] * 4, torch.zeros(4, dtype=torch.bool), 2,
                        sampler_logp=-(base + torch.arange(4 * T, dtype=torch.float32).view(4, T)))
    a, b = roll(3, 0.0), roll(5, 100.0)
    m = concat_groups([(a, 1), (b, 0)], pad_id=0)
    assert m.sampler_logp.shape == (4, 5)
    assert torch.equal(m.sampler_logp[:2, :3], a.sampler_logp[2:4]) and torch.equal(m.sampler_logp[2:], b.sampler_logp[:2])
    assert m.sampler_logp[:2, 3:].abs().sum() == 0
    a.sampler_logp = None
    assert concat_groups([(a, 0), (b, 0)], pad_id=0).sampler_logp is None


def test_graph_bookkeeping_with_a_stand_in_capture(tiny):
    """The CUDA-graph path's logic on CPU: a stand-in 'graph' bakes in the bucket it was captured for, as a real one
    bakes in shapes and pointers; warm-up side effects must be undone, one graph per bucket, reuse across calls, and
    a recapture when the weights change. Tokens equal the eager engine's throughout."""
    from types import SimpleNamespace
    model, tok = tiny
    captured = []

    def capture(dec, pool):
        dec.token_step()  # the warm-up really runs and moves the buffers on
        kv = dec.kv_len
        captured.append(kv)
        return SimpleNamespace(replay=lambda: (setattr(dec, "kv_len", kv), dec.token_step())), pool

    eng = StaticEngine(cuda_graphs=True, attn_bucket=8, sync_every=3, capture=capture)
    kw = dict(num_generations=2, max_new_tokens=14, temperature=1.0, top_k=40, seed=6)
    for i in range(2):
        _same(eng.generate(model, tok, [LONG, SHORT], **kw, seq_offset=i), EagerEngine().generate(
            model, tok, [LONG, SHORT], **kw, seq_offset=i))
    assert len(captured) == len(set(captured)) >= 2  # one capture per bucket, none again on the second call
    pm = _lora(model)
    n = len(captured)
    _same(eng.generate(pm, tok, [LONG, SHORT], **kw), EagerEngine().generate(pm, tok, [LONG, SHORT], **kw))
    assert len(captured) > n  # same shapes, new weight tensors: the buckets were captured again
    eng.release()
    assert not eng._decoders and not eng._merged and not eng._graphs.graphs


def test_a_failing_capture_warns_once_and_decodes_the_same_tokens_uncaptured(tiny):
    """A torch/GPU that cannot capture some op must cost speed, never the run: the capture error is reported once,
    the warm-up's side effects are undone, the engine never tries again (also after release), tokens equal eager's."""
    model, tok = tiny
    attempts = []

    def capture(dec, pool):
        attempts.append(dec.kv_len)
        dec.token_step()  # the warm-up ran and moved the buffers on before the capture itself failed
        raise RuntimeError("operation not permitted when stream is capturing")

    eng = StaticEngine(cuda_graphs=True, attn_bucket=8, sync_every=3, capture=capture)
    kw = dict(num_generations=2, max_new_tokens=14, temperature=1.0, top_k=40, seed=6)
    with pytest.warns(UserWarning, match="CUDA graph capture failed .*RuntimeError") as caught:
        got = eng.generate(model, tok, [LONG, SHORT], **kw)
        eng.release()
        again = eng.generate(model, tok, [LONG, SHORT], **kw, seq_offset=1)
    assert len([w for w in caught if "capture failed" in str(w.message)]) == 1
    assert len(attempts) == 1 and not eng._graphs.graphs
    _same(got, EagerEngine().generate(model, tok, [LONG, SHORT], **kw))
    _same(again, EagerEngine().generate(model, tok, [LONG, SHORT], **kw, seq_offset=1))


def test_static_engine_under_bf16_autocast_draws_the_eager_tokens(tiny):
    """Full fine-tuning rolls out fp32 master weights under bf16 autocast: the static engine runs there, keeps its
    KV cache in bf16 (the dtype SDPA computes in) and draws exactly the eager engine's tokens under the same
    autocast. The autocast tokens differ from the fp32 ones somewhere, so autocast really was in effect."""
    model, tok = tiny
    assert next(model.parameters()).dtype == torch.float32
    args = dict(num_generations=3, max_new_tokens=16, seed=3, seq_offset=5, rollout_batch=4)
    moved = False
    for kw in (SAMPLING[0], SAMPLING[3]):  # greedy, and every filter at once
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = EagerEngine().generate(model, tok, [LONG, SHORT, MID], **args, **kw)
            engine = StaticEngine(attn_bucket=8, sync_every=5)
            got = engine.generate(model, tok, [LONG, SHORT, MID], **args, **kw)
        (dec,) = engine._decoders.values()
        assert dec.cache.k.dtype == dec.cache.v.dtype == torch.bfloat16
        _same(ref, got)
        fp32 = EagerEngine().generate(model, tok, [LONG, SHORT, MID], **args, **kw)
        moved |= not torch.equal(fp32.completion_ids, ref.completion_ids)
    assert moved


def test_under_autocast_the_projections_are_cast_once_per_rollout_and_follow_the_updates(tiny):
    """fp32 masters under bf16 autocast: the step reads bf16 copies of the projections made at each generate (not
    autocast's per-token casts), in the same buffers call after call, equal to autocast's cast of the current
    weights — after an optimizer update the next rollout samples the new weights, still the eager engine's tokens."""
    model, tok = tiny
    args = dict(num_generations=2, max_new_tokens=12, seed=4, **SAMPLING[3])
    engine = StaticEngine(attn_bucket=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine.generate(model, tok, [LONG, SHORT], **args)
    (dec,) = engine._decoders.values()
    q = dec.w.layers[0].q.weight
    q_ptr, model_q = q.data_ptr(), model.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == dec.w.lm_head.weight.dtype == torch.bfloat16 and torch.equal(q, model_q.detach().bfloat16())
    assert dec.w.layers[0].ln1.weight.dtype == torch.float32                 # norms stay fp32, as under autocast
    try:
        with torch.no_grad():
            for p in model.parameters():  # an optimizer step
                p.mul_(1.01)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = EagerEngine().generate(model, tok, [LONG, SHORT], **args)
            got = engine.generate(model, tok, [LONG, SHORT], **args)
        (dec,) = engine._decoders.values()
        assert dec.w.layers[0].q.weight.data_ptr() == q_ptr                    # the same buffer: graphs stay valid
        assert torch.equal(dec.w.layers[0].q.weight, model_q.detach().bfloat16())
        _same(ref, got)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_session.sh runs it on a lent GPU)")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_graph_engine_draws_the_eager_tokens_on_cuda(amp):
    """On a GPU: the static engine with captured CUDA graphs and the Triton sampler draws the eager engine's tokens
    (fp32 weights; and fp32 masters under bf16 autocast, as full fine-tuning rolls out), twice in a row (replayed
    graphs, reused decoder)."""
    from grpo.model import build_tiny, load_model
    model, tok = load_model(build_tiny(), device=torch.device("cuda"), dtype=torch.float32)
    args = dict(num_generations=3, max_new_tokens=24, seed=3, seq_offset=5, rollout_batch=0, **SAMPLING[3])
    engine = StaticEngine(cuda_graphs=True, attn_bucket=16, sync_every=4)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        ref = EagerEngine().generate(model, tok, [LONG, SHORT, MID], **args)
        for _ in range(2):
            _same(ref, engine.generate(model, tok, [LONG, SHORT, MID], **args))
    assert engine._graphs.graphs  # the graphs really were captured and replayed
