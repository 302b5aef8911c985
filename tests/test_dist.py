"""grpo/dist.py on the paths only a multi-GPU run reaches, checked on CPU through the property that makes them right.

    python -m pytest tests/test_dist.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from torch.distributed.distributed_c10d import BackendConfig

from grpo import dist

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_process_group_has_a_backend_for_cpu_tensors(monkeypatch):
    """On a CUDA machine the loop all-reduces host tensors (rewards, zero-std counts, the dynamic-sampling vote, the
    metrics stack) and CUDA tensors (token counts, gradients). A collective is dispatched by its tensor's device type,
    so the group that init() creates must map both 'cpu' and 'cuda' to a backend (torch's own parser decides)."""
    created = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda backend=None, **kw: created.append(backend))
    rank, world, device = dist.init()
    assert created and device.type == "cuda"
    served = BackendConfig(created[0]).get_device_backend_map()
    assert served.get("cuda") == "nccl", served   # gradients and FSDP2 shards still go through NCCL
    assert served.get("cpu") == "gloo", served    # an NCCL-only group has no entry here: the first CPU reduce dies


def test_cpu_process_group_is_gloo_for_every_device():
    assert BackendConfig(dist.backend()).get_device_backend_map()["cpu"] == "gloo"


PROBE = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as tdist
from grpo import dist
from grpo.model import build_tiny, load_model
from grpo.rollout import generate

rank, world, device = dist.init()
model, tok = load_model(build_tiny(), device=device, dtype=torch.float32)
plain = [p.detach().clone() for p in model.parameters()]
policy = dist.parallelize(model, "fsdp")
calls = [0]
for name in ("all_gather_single", "all_gather_into_tensor"):  # whichever FSDP2 calls in this torch version
    if hasattr(tdist, name):
        real = getattr(tdist, name)
        setattr(tdist, name, lambda *a, _real=real, **k: (calls.__setitem__(0, calls[0] + 1), _real(*a, **k))[1])
prompts = [[{"role": "user", "content": "What raises blood pressure?"}]]
out = {"units": sum(1 for m in policy.modules() if dist.is_sharded(m))}
for whole in (False, True):
    calls[0] = 0
    with dist.root_unsharded(policy, whole=whole):
        roll = generate(model, tok, prompts, num_generations=2, max_new_tokens=8, seed=3)
    out[f"whole={whole}"] = {"gathers": calls[0], "ids": roll.completion_ids.tolist(), "T": roll.completion_ids.shape[1]}
out["sharded_after"] = all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
if rank == 0:
    print("PROBE " + json.dumps(out))
dist.close()
'''


def _two_ranks(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Run a probe script under torchrun with 2 gloo processes (argv[1] = the repo root, argv[2] = a folder for
    its output files); it must exit 0."""
    import socket
    script = tmp_path / "probe.py"
    script.write_text(source)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(ROOT), str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_fsdp_rollout_gathers_each_unit_once(tmp_path):
    """2 gloo processes, FSDP2 over the tiny model: a rollout with whole=True all-gathers every FSDP2 unit (each
    decoder layer + the root) once, where the per-token path gathers every layer for every decoded token; both
    sample the same tokens, and the parameters are sharded again afterwards (what the optimizer steps)."""
    done = _two_ranks(tmp_path, PROBE)
    out = json.loads(done.stdout.split("PROBE ", 1)[1].splitlines()[0])
    per_token, once = out["whole=False"], out["whole=True"]
    layers = out["units"] - 1
    assert once["gathers"] == out["units"]                       # one all-gather per FSDP2 unit
    assert per_token["gathers"] >= layers * per_token["T"]       # every layer, every token (prefill + each decode)
    assert once["ids"] == per_token["ids"]
    assert out["sharded_after"]


LOCKSTEP = r'''
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import torch
from grpo import dist
from grpo.model import build_tiny, load_model
from grpo.rollout import make_engine, sample_tokens

rank, world, device = dist.init()
model, tok = load_model(build_tiny(), device=device, dtype=torch.float32)
policy = dist.parallelize(model, "fsdp")
ids = torch.tensor([[5, 6, 7, 8]] * 2)
mask = torch.ones_like(ids)
# rank 0's rows all end at their first token; rank 1's never end: only a lockstep stop keeps rank 1's per-layer
# all-gathers answered
eos = torch.arange(len(tok)) if rank == 0 else torch.tensor([], dtype=torch.long)
out = {}
with dist.root_unsharded(policy, whole=False):
    eager = sample_tokens(model, ids, mask, eos=eos, pad=0, max_new_tokens=6, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        static = make_engine("static").sample_tokens(model, ids, mask, eos=eos, pad=0, max_new_tokens=6, seed=1)
out = {"eager": eager.tolist(), "static": static.tolist(), "warned": any("eager engine" in str(w.message) for w in caught)}
# one file per rank: two ranks printing to torchrun's shared stdout can interleave within a line
open(f"{sys.argv[2]}/rank{rank}.json", "w").write(json.dumps(out))
dist.close()
'''


@pytest.mark.slow
def test_sharded_rollout_ranks_stop_together(tmp_path):
    """FSDP2 layers left sharded for the rollout (the whole model does not fit a rank) all-gather in every forward:
    a rank whose rows all ended must keep decoding (pads) until every rank's rows have, or the others hang. The
    static engine cannot read sharded weights and decodes with the eager loop, saying so once."""
    _two_ranks(tmp_path, LOCKSTEP)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert all(len(row) == 6 for row in r1["eager"])                       # rank 1 decoded to max_new_tokens
    assert len(r0["eager"][0]) == 6 and all(row[1:] == [0] * 5 for row in r0["eager"])  # rank 0: EOS, then pads
    assert r0["static"] == r0["eager"] and r1["static"] == r1["eager"] and r0["warned"] and r1["warned"]
