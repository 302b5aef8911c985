"""Install: `pip install -e '.[dev]'` (tests), `pip install -e '.[gpu]'` (flash-attn on a CUDA machine), or
`pip install -e '.[dev,bench]'` (adds TRL, only for bench/bench_trl.py).

The Makefile pins the CPU build of torch before this runs (`make test`, `make demo`); on a GPU machine
install the CUDA torch you want first — the range below accepts it.
"""
from setuptools import setup

setup(
    name="grpo-rubric",
    version="0.1.0",
    description="A small, fast GRPO trainer for LLMs with rubric-graded, variance-aware rewards",
    python_requires=">=3.10",
    packages=["grpo", "grpo.kernels", "rewards", "data"],
    package_data={"data": ["samples/*.jsonl", "samples/*.md"]},
    install_requires=[
        "torch>=2.4,<2.15",
        "transformers>=4.56",  # Qwen3; from_pretrained(dtype=...)
        "peft>=0.14",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "openai>=1.40",
        "tqdm>=4.60",
        "numpy>=1.24",
        "matplotlib>=3.7",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6", "triton>=3.0", "accelerate>=1.0"],
        # bench/bench_trl.py only: TRL's GRPOTrainer timed beside our step. Nothing in the package or tests imports it.
        "bench": ["trl==1.16.0", "datasets>=3.0"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "triton>=3.0", "scipy>=1.10"],
    },
)
