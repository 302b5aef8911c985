"""Shared test setup: hypothesis profiles and the location of the real data samples.

`pytest` uses the derandomized `ci` profile; `HYPOTHESIS_PROFILE=long pytest tests/test_reward_invariants.py`
explores far more examples locally.
"""
import os
import sys
from pathlib import Path

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
