"""Data: loaders (HealthBench, RaR-Medicine, heart JSONL), heart filter, splits, prompt format, bundled samples."""
from data.sample import Sample

__all__ = ["Sample"]
