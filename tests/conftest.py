"""Shared test setup: one intra-op thread, hypothesis profiles and the location of the real data samples.

`pytest` uses the derandomized `ci` profile; `HYPOTHESIS_PROFILE=long pytest tests/test_reward_invariants.py`
explores far more examples locally. Tests run with OMP_NUM_THREADS=1 unless it is set: the suite's models are tiny
(hidden 64), so a second OpenMP thread only adds synchronisation, and on a loaded 2-core box it spin-waits for a core
(test_reliability, test_checkpoint and test_evaluate: 25-32 s with one thread, 47-71 s with two at load 2-3; the
tests that time one model forward already pinned it, tests/test_judge.py: 5 ms vs 0.5 s on CI). It is set before
torch is imported, so subprocesses (torchrun ranks, the Triton interpreter run) inherit it too.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without `pip install -e`

SHARED_DATA = ROOT.parent / "shared" / "data"  # ../shared/data beside the checkout; absent on a user's clone

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def shared_data() -> Path:
    """Directory of the real HealthBench / RaR-Medicine samples; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (fresh clone)")
    return SHARED_DATA


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only when an interpreter test will run
def pytest_collection_modifyitems(config, items):
    """Start the kernels' TRITON_INTERPRET=1 run in the background (tests/test_kernels_logprobs.py run_interpreted)."""
    if config.option.collectonly:
        return
    if any(item.name == "test_triton_cases_in_interpreter" for item in items):
        sys.modules["test_kernels_logprobs"].start_interpreted()  # every kernel test file imports it


def pytest_sessionfinish(session):
    module = sys.modules.get("test_kernels_logprobs")
    if module is not None:
        module.stop_interpreted()
