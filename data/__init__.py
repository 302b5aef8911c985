"""Data: loaders (HealthBench, RaR-Medicine, heart JSONL), heart filter, splits, prompt format, bundled samples."""
from data.heart import HeartLabel, classify
from data.loaders import (bundled_demo_path, from_record, is_heart, iter_samples, load_samples, resolve_data_path,
                          to_record, write_samples)
from data.sample import Sample

__all__ = ["Sample", "HeartLabel", "classify", "bundled_demo_path", "from_record", "is_heart", "iter_samples",
           "load_samples", "resolve_data_path", "to_record", "write_samples"]
