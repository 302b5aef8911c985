"""Every kernel compiles for Hopper (sm_90) and consumer Blackwell (sm_120) at its shipped block sizes — no GPU needed.

    python -m pytest tests/test_kernels_compile.py -v

The interpreter accepts code the real compiler rejects, so this is the only CPU check that the kernels would
build on the GPU. triton.compile runs the whole pipeline down to a cubin (ptxas ships with triton); the cubin's
resource usage (cuobjdump) gives registers and local memory, i.e. spills, and its SASS shows which matrix
instructions the fused linear kernels use. Arguments are specialised as the JIT would for Qwen3-14B shapes
(16-byte aligned pointers, integer arguments divisible by 16 marked so), since that specialisation is what lets
the loads become pipelined cp.async copies.
"""
import importlib
import re
import subprocess

import pytest
import torch

from grpo import kernels

pytestmark = pytest.mark.skipif(not kernels.HAS_TRITON or kernels.INTERPRET,
                                reason="needs triton, and compiled (not interpreted) kernel objects")
if kernels.HAS_TRITON and not kernels.INTERPRET:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

lin = importlib.import_module("grpo.kernels.linear_logprobs")
sel = importlib.import_module("grpo.kernels.selective_logprobs")
smp = importlib.import_module("grpo.kernels.sampling")

TL_DTYPE = {torch.bfloat16: "bf16", torch.float32: "fp32"}
# Qwen3-14B head shapes at 16k completion tokens: the values the JIT would see for the integer arguments.
INTS = dict(N=16_384, V=151_936, H=5_120, stride_row=151_936, stride_drow=151_936, stride_h=5_120, stride_w=5_120,
            stride_dz=151_936, tiles_per_split=19, top_k=50, seed32=12_345, tmix32=-2_048_144_777)
FLOAT_ARGS = ("inv_temp", "temperature", "top_p", "log_min_p")
SHARED_LIMIT = {90: 232_448, 120: 101_376}  # bytes of shared memory one block may use (H100; RTX 6000 PRO)


def compile_kernel(fn, dtype, constexprs, num_warps, num_stages, cap):
    """triton.compile with a signature typed from the argument names; returns the CompiledKernel."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = {"targets_ptr": "*i64", "h_ptr": f"*{TL_DTYPE[dtype]}", "w_ptr": f"*{TL_DTYPE[dtype]}",
                         "logits_ptr": f"*{TL_DTYPE[dtype]}", "dlogits_ptr": f"*{TL_DTYPE[dtype]}",
                         "dz_ptr": f"*{TL_DTYPE[dtype]}", "seq_ids_ptr": "*i64",
                         "out_ptr": "*i64"}.get(name, "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if INTS[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32), options=dict(num_warps=num_warps,
                                                                              num_stages=num_stages,
                                                                              enable_fp_fusion=True))


def cuobjdump(kernel, flag, tmp_path):
    path = tmp_path / "k.cubin"
    path.write_bytes(kernel.asm["cubin"])
    return subprocess.run([triton.knobs.nvidia.cuobjdump.path, flag, str(path)], capture_output=True, text=True,
                          check=True).stdout


def resources(kernel, tmp_path):
    out = cuobjdump(kernel, "--dump-resource-usage", tmp_path)
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", out))
    return {k: int(v) for k, v in fields.items()}


def linear_cases(cap):
    for dtype in (torch.bfloat16, torch.float32):
        cfg = lin._config(dtype, cap)
        blocks = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}
        dot = lin._dot_args(dtype)
        for entropy in (False, True):
            yield ("linear_fwd", lin._linear_logprobs_fwd_kernel, dtype, dict(WITH_ENTROPY=entropy, **blocks, **dot),
                   cfg, cap)
        yield "linear_bwd", lin._linear_logprobs_bwd_kernel, dtype, dict(**blocks, **dot), cfg, cap


def selective_cases(cap):
    blocks = dict(BLOCK_N=sel._BLOCK_N, BLOCK_V=sel._BLOCK_V)
    cfg = dict(num_warps=sel._NUM_WARPS, num_stages=3)
    for dtype in (torch.bfloat16, torch.float32):
        for entropy in (False, True):
            yield ("selective_fwd", sel._selective_logprobs_fwd_kernel, dtype, dict(WITH_ENTROPY=entropy, **blocks),
                   cfg, cap)
        yield "selective_bwd", sel._selective_logprobs_bwd_kernel, dtype, blocks, cfg, cap


def sampling_cases(cap):
    """The sampler with every filter on (the longest kernel) and with none (plain Gumbel-max)."""
    cfg = dict(num_warps=smp._NUM_WARPS, num_stages=3)
    for dtype in (torch.bfloat16, torch.float32):
        for on in (True, False):
            yield ("sampling" + ("" if on else "_plain"), smp._sample_kernel, dtype,
                   dict(USE_TOP_K=on, USE_TOP_P=on, USE_MIN_P=on, BLOCK_V=smp._BLOCK_V, NUM_PIVOTS=smp._NUM_PIVOTS),
                   cfg, cap)


CASES = [c for cap in (90, 120) for c in (*linear_cases(cap), *selective_cases(cap), *sampling_cases(cap))] \
    if kernels.HAS_TRITON and not kernels.INTERPRET else []


@pytest.mark.parametrize("name,fn,dtype,constexprs,cfg,cap", CASES,
                         ids=[f"{c[0]}-{TL_DTYPE[c[2]]}{'-ent' if c[3].get('WITH_ENTROPY') else ''}-sm{c[5]}"
                              for c in CASES])
def test_compiles_without_spills(name, fn, dtype, constexprs, cfg, cap, tmp_path):
    k = compile_kernel(fn, dtype, constexprs, cfg["num_warps"], cfg["num_stages"], cap)
    res = resources(k, tmp_path)
    print(f"{name} {TL_DTYPE[dtype]} sm_{cap}: {res} shared={k.metadata.shared}")
    assert res["LOCAL"] == 0 and res["STACK"] == 0, f"register spills: {res}"
    assert k.metadata.shared <= SHARED_LIMIT[cap], f"needs {k.metadata.shared} B shared memory"
    if name.startswith("linear"):
        sass = cuobjdump(k, "--dump-sass", tmp_path)
        if dtype == torch.bfloat16:  # tensor cores: warpgroup MMA on Hopper, warp-level MMA on sm_120
            assert re.search(r"HGMMA\.64x\d+x16\.F32\.BF16" if cap == 90 else r"HMMA\.16816\.F32\.BF16", sass)
        else:  # fp32 asks for IEEE precision: FMA, never TF32 tensor cores that would round to 10 mantissa bits
            assert "FFMA" in sass and not re.search(r"H[G]?MMA", sass)
        # the weight/hidden tiles stream through shared memory in an async pipeline (cp.async = LDGSTS)
        assert "LDGSTS" in sass or "UTMALDG" in sass
