"""Triton fused log-prob kernels, each beside its torch reference.

    python -m pytest tests/test_kernels_logprobs.py tests/test_kernels_linear.py tests/test_kernels_sampling.py \
        tests/test_kernels_compile.py
    python bench/bench_kernels.py

selective_logprobs(logits, targets, T)        log p(target) from materialised (N, V) logits, one pass per row
linear_logprobs(hidden, weight, targets, T)   lm_head fused in: the (N, V) logits are never built
sample_tokens(logits, seq_ids, t, seed=...)   keyed Gumbel-max with top-k / top-p / min-p, no (rows, V) temporaries
All run Triton on CUDA tensors (or on CPU under TRITON_INTERPRET=1) and a chunked torch path elsewhere;
`impl="triton" | "torch"` forces one. The package imports without triton installed.
"""
from ._common import HAS_TRITON, INTERPRET
from .linear_logprobs import linear_logprobs
from .selective_logprobs import selective_logprobs
from .sampling import sample_tokens

__all__ = ["selective_logprobs", "linear_logprobs", "sample_tokens", "HAS_TRITON", "INTERPRET"]
