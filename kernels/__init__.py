"""Triton fused log-prob kernels, each beside its torch reference."""
