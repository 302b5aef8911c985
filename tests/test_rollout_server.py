"""--rollout server: grpo/rollout_server.py against a loopback vLLM (tests/vllm_server.py) backed by the tiny model.

    python -m pytest tests/test_rollout_server.py

The loopback samples with the local engine's keyed sampler, so a served rollout must equal the local one token for
token, and its fp32 log-probs must equal the trainer's: every difference is a protocol or sync bug.
"""
import pytest
import torch

from grpo.advantages import group_advantages
from grpo.logprobs import completion_logprobs
from grpo.loss import LOSSES, logp_gap, truncated_is_weights
from grpo.model import add_lora, build_tiny, load_model
from grpo.rollout import generate, stop_token_ids
from grpo.rollout_server import FULL_FT, RolloutServerError, ServerEngine, request_seed
from tests.vllm_server import LoopbackVLLM

CPU = torch.device("cpu")
PROMPTS = [[{"role": "user", "content": "Is aspirin safe with warfarin?"}],
           [{"role": "user", "content": "My heart races after coffee and I feel dizzy, why?"}]]
KW = dict(num_generations=3, max_new_tokens=10, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=5,
          seq_offset=6, max_prompt_len=None, rollout_batch=0)


@pytest.fixture(scope="module")
def base():
    return load_model(build_tiny(), device=CPU)


@pytest.fixture
def policy():
    model, tok = load_model(build_tiny(), device=CPU)
    torch.manual_seed(0)
    model = add_lora(model, r=4, alpha=8)
    with torch.no_grad():  # a non-zero adapter, so serving the base model by mistake would show
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model, tok


def _engine(server, tmp_path, **kw):
    return ServerEngine(server.url, server.name, adapter_dir=str(tmp_path / "adapters"), rank=0, **kw)


def _assert_same_rollouts(served, local):
    assert torch.equal(served.prompt_ids, local.prompt_ids) and torch.equal(served.prompt_mask, local.prompt_mask)
    T = served.completion_ids.shape[1]
    assert T == local.completion_ids.shape[1]
    assert torch.equal(served.completion_mask, local.completion_mask)
    m = local.completion_mask.bool()
    assert torch.equal(served.completion_ids[m], local.completion_ids[m])
    assert served.texts == local.texts and torch.equal(served.truncated, local.truncated)


@pytest.mark.parametrize("filters", [dict(), dict(top_k=20, top_p=0.9, min_p=0.02, temperature=0.8)])
def test_served_rollouts_equal_local_ones_and_the_request_speaks_vllm(base, policy, tmp_path, filters):
    model, tok = policy
    kw = {**KW, **filters}
    with LoopbackVLLM(*base) as server:
        engine = _engine(server, tmp_path)
        served = engine.generate(model, tok, PROMPTS, **kw)
        # The engine sends one request per prompt, concurrently (asyncio.gather), so the order they reach the server
        # in is a race between its handler threads. This test once read server.requests[0] as "the first prompt's"
        # and failed whenever the second prompt won (the prompts differ from token 4 on: the chat template's prefix
        # is shared) — the flake of 2026-12-03. The product was right: each reply is matched to its prompt by
        # gather's order, which _assert_same_rollouts checks. Requests are matched to prompts by their seed here.
        bodies = sorted(server.requests, key=lambda r: r["seed"])
        body = bodies[0]
    local = generate(model, tok, PROMPTS, **kw)
    _assert_same_rollouts(served, local)
    # the request, field by field (names from vLLM's CompletionRequest)
    for b, sent in enumerate(bodies):  # prompt b's request carries prompt b's tokens and seed·2³² + its first row
        assert sent["prompt"] == local.prompt_ids[3 * b][local.prompt_mask[3 * b].bool()].tolist()
        assert sent["seed"] == 5 * 2**32 + 6 + 3 * b
    assert len(bodies) == 2 and body["n"] == 3 and body["max_tokens"] == 10 and body["logprobs"] == 0
    assert body["return_tokens_as_token_ids"] is True and body["return_token_ids"] is True
    assert body["temperature"] == kw["temperature"] and body["top_p"] == kw["top_p"] and body["min_p"] == kw["min_p"]
    assert body["top_k"] == (kw["top_k"] or -1) and body["model"] == "grpo-step0"
    assert body["stop_token_ids"] == stop_token_ids(model, tok).tolist() and tok.eos_token_id in body["stop_token_ids"]
    # engine log-probs = trainer log-probs at the sampling temperature when no filter is active (same fp32 model)
    ids, attn = served.input_ids, served.attention_mask
    ours = completion_logprobs(model, ids, attn, served.completion_mask, temperature=kw["temperature"],
                               impl="reference")
    gap = logp_gap(ours, served.sampler_logp, served.completion_mask)
    if not filters:
        assert gap["rollout/logp_gap_max"].item() < 1e-4, gap
    else:  # filtered: the engine's distribution is renormalised over the kept tokens, so its log p is higher
        assert (served.sampler_logp >= ours - 1e-4)[served.completion_mask.bool()].all()
    assert served.sampler_logp.dtype == torch.float32 and served.sampler_logp.shape == served.completion_ids.shape


def test_the_server_samples_with_the_adapter_just_saved(base, policy, tmp_path):
    model, tok = policy
    with LoopbackVLLM(*base) as server:
        engine = _engine(server, tmp_path, keep_adapters=2)
        engine.generate(model, tok, PROMPTS[:1], **KW)
        for step in (1, 2, 3):
            with torch.no_grad():  # an "optimizer step"
                for n, p in model.named_parameters():
                    if "lora_" in n:
                        p.add_(torch.randn_like(p) * 0.05)
            engine.after_update(model, step)
            assert engine.adapter == f"grpo-step{step}" and engine.version == step + 1
            assert list(server.adapters) == [f"grpo-step{step}"]  # the previous one was unloaded
            served_model = server.adapters[f"grpo-step{step}"]
            ours = {n: p for n, p in model.named_parameters() if "lora_" in n}
            theirs = dict(served_model.named_parameters())
            assert ours and all(torch.equal(p, theirs[n]) for n, p in ours.items())  # bit-exact weights
            served = engine.generate(model, tok, PROMPTS[:1], **KW)
            assert server.served_by[-1] == f"grpo-step{step}"
            _assert_same_rollouts(served, generate(model, tok, PROMPTS[:1], **KW))
        assert [name for name, _ in server.loads] == [f"grpo-step{s}" for s in range(4)]
        kept = sorted(p.name for p in (tmp_path / "adapters").iterdir())
        assert kept == ["grpo-step2", "grpo-step3"]  # keep_adapters=2: older ones deleted from disk
        assert (tmp_path / "adapters" / "grpo-step3" / "adapter_model.safetensors").exists()
        # a trainer restarted against the same server re-syncs a name the server still holds
        again = _engine(server, tmp_path)
        again.after_update(model, 3)
        assert [name for name, _ in server.loads][-1] == "grpo-step3" and list(server.adapters) == ["grpo-step3"]


@pytest.mark.parametrize("fault", ["500", "reset", "slow", "truncated_body", "bad_tokens", "short", "abort"])
def test_a_failed_or_malformed_request_is_retried(base, policy, tmp_path, fault):
    model, tok = policy
    with LoopbackVLLM(*base, faults=lambda route, key, attempt: fault if route == "/v1/completions" and attempt == 0
                      else None, slow_s=6.0) as server:
        engine = _engine(server, tmp_path, timeout=3.0 if fault == "slow" else 30.0)
        served = engine.generate(model, tok, PROMPTS, **KW)
        tries = [a for k, a in server.attempts.items() if k.startswith("/v1/completions")]
        assert server.served[fault] == 2 and len(tries) == 2  # each prompt: failed once, then answered
        assert all(t == 2 for t in tries) or fault == "slow"  # on a loaded CPU even a fresh reply may pass 3 s
    _assert_same_rollouts(served, generate(model, tok, PROMPTS, **KW))
    assert (served.completion_mask.sum(-1) > 0).all()
    assert engine.stats["rollout/reasks"] == (2 if fault in ("bad_tokens", "short", "abort") else 0)


def test_persistent_failures_stop_the_run_with_a_clear_message(base, policy, tmp_path):
    model, tok = policy
    with LoopbackVLLM(*base, faults=lambda route, key, attempt: "bad_tokens" if "completions" in route else None) as s:
        with pytest.raises(RolloutServerError, match="3 malformed completion replies"):
            _engine(s, tmp_path, max_reasks=2).generate(model, tok, PROMPTS[:1], **KW)
    with LoopbackVLLM(*base, faults=lambda route, key, attempt: "500" if "completions" in route else None) as s:
        with pytest.raises(RolloutServerError, match=r"after 1 retries.*--resume auto"):
            _engine(s, tmp_path, max_retries=1).generate(model, tok, PROMPTS[:1], **KW)
        assert s.served["500"] == 2  # the first try and one client retry


def test_the_engine_going_away_mid_run_stops_the_run(base, policy, tmp_path):
    model, tok = policy
    server = LoopbackVLLM(*base).start()
    engine = _engine(server, tmp_path, max_retries=1, timeout=2.0)
    engine.generate(model, tok, PROMPTS[:1], **KW)
    server.stop()
    with pytest.raises(RolloutServerError, match=r"rollout server http://127\.0\.0\.1:\d+/v1: completions .*"
                                                 r"still running\?.*--resume auto"):
        engine.generate(model, tok, PROMPTS[:1], **KW)
    with pytest.raises(RolloutServerError, match="load_lora_adapter failed"):
        engine.after_update(model, 1)


def test_user_errors_are_one_line_naming_the_fix(base, policy, tmp_path):
    model, tok = policy
    with LoopbackVLLM(*base, runtime_lora=False) as server:
        with pytest.raises(RolloutServerError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            _engine(server, tmp_path).generate(model, tok, PROMPTS[:1], **KW)
    with LoopbackVLLM(*base) as server:
        with pytest.raises(RolloutServerError, match="full fine-tuning") as e:
            _engine(server, tmp_path).generate(base[0], tok, PROMPTS[:1], **KW)
        assert str(e.value) == FULL_FT and "\n" not in FULL_FT
        engine = _engine(server, tmp_path)
        engine.after_update(model, 0)
        engine.model = "not-served"
        engine.adapter = "grpo-step9"  # a name the server does not hold
        with pytest.raises(RolloutServerError, match="HTTP 404.*--rollout_model"):
            engine.generate(model, tok, PROMPTS[:1], **KW)
    with LoopbackVLLM(*base) as server:
        assert _engine(server, tmp_path).check() == ["tiny"]
        with pytest.raises(RolloutServerError, match=r"does not serve 'Qwen/Qwen3-14B' \(it serves \['tiny'\]\)"):
            ServerEngine(server.url, "Qwen/Qwen3-14B", adapter_dir=str(tmp_path), rank=0).check()
    with pytest.raises(RolloutServerError, match=r"GET /models failed \(APIConnectionError.*--rollout_base_url"):
        ServerEngine(server.url, "tiny", adapter_dir=str(tmp_path), rank=0).check()  # stopped above
    for bad, match in [(dict(base_url=""), "--rollout_base_url"), (dict(model=""), "--rollout_model")]:
        with pytest.raises(ValueError, match=match):
            ServerEngine(**{"base_url": "http://x/v1", "model": "m", **bad}, adapter_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--seed"):
        request_seed(-1, 0)


def test_ranks_share_one_engine_or_use_one_each(tmp_path):
    one = [ServerEngine("http://a/v1", "m", adapter_dir=str(tmp_path), rank=r) for r in range(4)]
    assert [e.url for e in one] == ["http://a/v1"] * 4 and [e.syncs for e in one] == [True, False, False, False]
    two = [ServerEngine("http://a/v1, http://b/v1", "m", adapter_dir=str(tmp_path), rank=r) for r in range(4)]
    assert [e.url for e in two] == ["http://a/v1", "http://b/v1"] * 2
    assert [e.syncs for e in two] == [True, True, False, False]


def _train(engine_generate, sync, steps, model, tok, samples, lr=1e-2):
    """The loop's pieces, driven directly: rollout → keyword judge → hybrid reward → advantages → dapo loss with
    truncated IS weights → AdamW → weight sync. Returns the mean reward of each step and the max log-prob gap."""
    from data.format import parse, to_messages
    from rewards import REWARDS
    from rewards.judge import grade_sync, make_judge
    judge, G = make_judge("keyword"), 4
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rewards, gaps = [], []
    for step in range(1, steps + 1):
        picked = [samples[(2 * step + i) % len(samples)] for i in range(2)]
        roll = engine_generate(model, tok, [to_messages(s) for s in picked], **{**KW, "num_generations": G,
                                                                              "max_new_tokens": 16,
                                                                              "seq_offset": 8 * step})
        items = [(s.prompt, parse(roll.texts[b * G + g]).solution, s.rubric) for b, s in enumerate(picked)
                 for g in range(G)]
        r = torch.tensor([REWARDS["hybrid"](rub, met) for (_, _, rub), met in zip(items, grade_sync(judge, items))],
                         dtype=torch.float32).view(-1, G)                      # (B, G)
        adv = group_advantages(r).reshape(-1)                                  # (B*G,)
        logp = completion_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_mask)  # (B*G, T)
        old = logp.detach()
        w = None
        if getattr(roll, "sampler_logp", None) is not None:
            w = truncated_is_weights(old, roll.sampler_logp, roll.completion_mask, cap=3.0)
            gaps.append(logp_gap(old, roll.sampler_logp, roll.completion_mask)["rollout/logp_gap_max"].item())
        loss, _ = LOSSES["dapo"](logp, old, None, adv, roll.completion_mask, eps_low=0.2, eps_high=0.28, beta=0.0,
                                 token_weights=w)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(model, step)
        rewards.append(r.mean().item())
    return rewards, gaps


@pytest.mark.slow
def test_served_training_equals_local_training_and_its_reward_rises(base, tmp_path):
    """Twenty GRPO steps on two demo prompts through the served engine (sampling, IS weights, adapter sync every
    step) give the rewards of the same steps through the local engine, the engine–trainer gap stays ~0, and the
    reward rises (mean of the last 4 steps vs the first 4; 12 steps were too few to rise reliably: +0.45 on one
    install, +1.0 asked)."""
    from data import bundled_demo_path, load_samples
    samples = load_samples(bundled_demo_path())[:2]
    runs, STEPS = {}, 20
    for kind in ("local", "served"):
        model, tok = load_model(build_tiny(), device=CPU)
        torch.manual_seed(0)
        model = add_lora(model, r=8, alpha=16)
        if kind == "local":
            runs[kind] = _train(generate, lambda m, s: None, STEPS, model, tok, samples)
        else:
            with LoopbackVLLM(*base) as server:
                engine = _engine(server, tmp_path)
                runs[kind] = _train(engine.generate, engine.after_update, STEPS, model, tok, samples)
                assert server.served_by[-1] == f"grpo-step{STEPS - 1}" and engine.adapter == f"grpo-step{STEPS}"
    (local, _), (served, gaps) = runs["local"], runs["served"]
    assert served == pytest.approx(local, abs=1e-6)
    assert len(gaps) == STEPS and max(gaps) < 1e-4
    assert sum(served[-4:]) / 4 > sum(served[:4]) / 4 + 1.0, served


def test_torchrun_trains_against_the_loopback_server(base, tmp_path):
    """`grpo/train.py --rollout server --rollout_base_url ...` end to end (needs the lead's flag wiring)."""
    _wired()
    import json
    from grpo.train import main
    with LoopbackVLLM(*base) as server:
        main(["--prompts_per_step=2", "--num_generations=4", "--max_new_tokens=12", "--plot=false", "--lr=1e-3",
              "--full_finetune=false", "--steps=3", "--save_every=3", f"--out={tmp_path}", "--rollout=server",
              f"--rollout_base_url={server.url}", f"--rollout_model={server.name}", "--malformed=graded"])
        assert server.served_by and server.served_by[-1] == "grpo-step2"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("skipped/reason") is None]  # a skipped step runs no trainer pass: no gap
    assert len(rows) == 3 and trained and all(r["rollout/logp_gap_max"] < 1e-4 for r in trained)


def _wired():
    from grpo.config import Config
    if "rollout" not in Config.__dataclass_fields__:
        pytest.skip("--rollout is not wired into grpo/config.py yet")


SERVED = ["--prompts_per_step=2", "--num_generations=4", "--max_new_tokens=12", "--plot=false", "--lr=1e-3",
          "--full_finetune=false", "--rollout=server", "--malformed=graded"]  # 12 tokens never hold the format


def test_engine_failing_mid_run_stops_it_with_the_checkpoint_intact_and_resume_continues(base, tmp_path):
    """After 2 steps (4 completion requests) the engine answers only 500s: the run stops with RolloutServerError,
    its step-2 checkpoint is intact, and --resume auto against a healthy engine finishes the run."""
    _wired()
    import json
    from grpo import checkpoint
    from grpo.train import main
    calls = [0]

    def faults(route, key, attempt):
        calls[0] += route == "/v1/completions"
        return "500" if route == "/v1/completions" and calls[0] > 4 else None
    args = SERVED + ["--steps=4", "--save_every=2", f"--out={tmp_path}", f"--rollout_model={base[0].name_or_path}"]
    with LoopbackVLLM(*base, name=base[0].name_or_path, faults=faults) as server:
        with pytest.raises(RolloutServerError, match=r"completions after \d+ retries.*--resume auto"):
            main(args + [f"--rollout_base_url={server.url}"])
    assert checkpoint.latest(tmp_path).name == "step-000002"
    with LoopbackVLLM(*base, name=base[0].name_or_path) as server:
        main(args + [f"--rollout_base_url={server.url}", "--resume=auto"])
        # the resumed adapter is synced before the first rollout: it, not the base model, samples
        assert server.served_by[0] == server.loads[0][0] == "grpo-step2"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [3, 4] and checkpoint.latest(tmp_path).name == "step-000004"


@pytest.mark.slow
def test_two_ranks_share_one_engine(base, tmp_path):
    """torchrun with 2 gloo processes against one engine: rank 0 alone syncs each adapter, both ranks sample with it,
    and the run ends at the rewards of the 1-process served run (same global batch, same sampled tokens)."""
    _wired()
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    rewards = {}
    for n in (1, 2):
        with LoopbackVLLM(*base) as server:
            args = SERVED + ["--prompts_per_step=4", "--steps=2", "--save_every=2",
                             f"--rollout_base_url={server.url}", f"--rollout_model={server.name}",
                             f"--out={tmp_path / str(n)}"]
            if n == 1:  # what `torchrun --nproc_per_node=1` runs, in this process (one interpreter start saved)
                from grpo.train import main
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 gives the two ranks below
                try:
                    main(args)
                finally:
                    torch.set_num_threads(threads)
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                       "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(root / "grpo" / "train.py"),
                       *args]
                done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, done.stderr[-3000:]
            assert [name for name, _ in server.loads] == ["grpo-step0", "grpo-step1", "grpo-step2"]  # once each
            assert server.served_by == ["grpo-step0"] * 4 + ["grpo-step1"] * 4
        rows = [json.loads(line) for line in (tmp_path / str(n) / "metrics.jsonl").read_text().splitlines()]
        rewards[n] = [r["reward/mean"] for r in rows]
    assert rewards[2] == pytest.approx(rewards[1], abs=1e-9)


def _free_port() -> int:
    """A free TCP port for torchrun's rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_key_stays_inside_the_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-secret-123")
    engine = ServerEngine("http://127.0.0.1:9/v1", "m", adapter_dir=str(tmp_path), rank=0)
    assert engine._admin.api_key == "sk-secret-123"
    assert "sk-secret" not in repr(engine) and "sk-secret" not in repr({k: v for k, v in vars(engine).items()
                                                                          if k != "_admin"})


def test_every_engine_is_built_from_the_run_config_by_lookup(tmp_path):
    """train.py's one line, make_engine(cfg.rollout, cfg, out): each ENGINES factory reads what it needs from the
    config; explicit options win; the default is the static engine (it runs under autocast too)."""
    from grpo.config import Config
    from grpo.decode import StaticEngine
    from grpo.rollout import ENGINES, EagerEngine, make_engine
    served = Config(rollout="server", rollout_base_url="http://127.0.0.1:9/v1, http://127.0.0.1:10/v1",
                    rollout_model="Qwen/Qwen3-14B")
    engine = make_engine(served.rollout, served, tmp_path)
    assert isinstance(engine, ServerEngine) and engine.url == "http://127.0.0.1:9/v1"  # rank 0: the first engine
    assert engine.model == "Qwen/Qwen3-14B" and engine.adapter_dir == (tmp_path / "adapters").resolve()
    assert make_engine("server", served, tmp_path, timeout=5.0).timeout == 5.0
    for rollout, want in [("local", StaticEngine), ("static", StaticEngine), ("eager", EagerEngine)]:
        cfg = Config(rollout=rollout)
        assert type(make_engine(cfg.rollout, cfg, tmp_path)) is want, rollout
    assert set(ENGINES) == {"eager", "static", "local", "server"}
    assert make_engine("static", sync_every=3).sync_every == 3  # benches: no config, explicit options
    with pytest.raises(ValueError, match="unknown rollout engine 'vllm'; choose one of eager, local, server, static"):
        make_engine("vllm", Config(), tmp_path)


def test_served_flags_are_checked_before_anything_loads():
    """--rollout server with full fine-tuning, or without its URL / model name, is refused when the flags are read."""
    from grpo.config import parse_args
    ok = ["--full_finetune=false", "--rollout=server", "--rollout_base_url=http://127.0.0.1:8000/v1",
          "--rollout_model=m"]
    assert parse_args(ok).rollout_model == "m"
    with pytest.raises(ValueError) as e:
        parse_args(ok + ["--full_finetune=true"])
    assert str(e.value) == FULL_FT
    for missing in ok[2:]:
        with pytest.raises(ValueError, match="needs --rollout_base_url .* and --rollout_model"):
            parse_args([a for a in ok if a != missing])


def test_nothing_of_vllm_is_a_dependency():
    """The package's requirements name no vLLM, and the served path imports with `import vllm` made to fail."""
    import subprocess
    import sys
    from importlib.metadata import requires
    from pathlib import Path
    assert not [r for r in requires("grpo-rubric") or [] if r.lower().startswith("vllm")]
    code = "import sys; sys.modules['vllm'] = None; import grpo.rollout_server, grpo.train, tests.vllm_server"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
