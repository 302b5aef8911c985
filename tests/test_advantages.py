"""grpo.advantages against hand-computed values and a slow `statistics`-module reference; hypothesis properties.

    python -m pytest tests/test_advantages.py
"""
import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grpo.advantages import group_advantages, zero_std_groups

NAN = float("nan")
SCALES = ("group", "batch", "none")


def reference_advantages(rows: list[list[float]], scale: str) -> list[list[float]]:
    """Slow fp64 reference, one Python float at a time: NaN → 0, flat groups → 0, sample (n − 1) stds."""
    finite_all = [x for row in rows for x in row if not math.isnan(x)]
    out = []
    for row in rows:
        finite = [x for x in row if not math.isnan(x)]
        if len(set(finite)) < 2:  # no spread (or < 2 rewards): no signal
            out.append([0.0] * len(row))
            continue
        mean = statistics.fmean(finite)
        std = {"group": lambda: statistics.stdev(finite), "batch": lambda: statistics.stdev(finite_all),
               "none": lambda: 1.0}[scale]()
        out.append([0.0 if math.isnan(x) else (x - mean) / std for x in row])
    return out


# rubric-like rewards on a binary grid (k/4), so an affine map cannot merge two distinct rewards by rounding;
# None marks a sample whose reward could not be computed
reward = st.one_of(st.integers(-40, 40).map(lambda k: k / 4), st.sampled_from([0.0, 1.0]), st.none())
reward_batches = st.integers(1, 4).flatmap(
    lambda G: st.lists(st.lists(reward, min_size=G, max_size=G), min_size=1, max_size=5))


def as_tensor(rows) -> torch.Tensor:
    return torch.tensor([[NAN if x is None else x for x in row] for row in rows], dtype=torch.float64)


def test_hand_computed_group_batch_none():
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    # group 1: mean 2, sample std 1; group 2 is flat
    torch.testing.assert_close(group_advantages(r, "group"), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(group_advantages(r, "none"), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    # batch: mean 3.5, squared deviations 6.25+2.25+0.25+3·2.25 = 15.5, /5 → std √3.1
    s = math.sqrt(3.1)
    torch.testing.assert_close(group_advantages(r, "batch"), torch.tensor([[-1 / s, 0.0, 1 / s], [0.0, 0.0, 0.0]]))


def test_nan_reward_is_zero_and_left_out_of_the_statistics():
    r = torch.tensor([[1.0, NAN, 3.0, NAN]])
    # mean of {1, 3} = 2, sample std √2; a NaN counted as anything would move both
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(group_advantages(r, "group"), torch.tensor([[-h, 0.0, h, 0.0]]))
    assert torch.equal(group_advantages(torch.tensor([[NAN, NAN]])), torch.zeros(1, 2))
    assert torch.equal(group_advantages(torch.tensor([[NAN, 4.0]])), torch.zeros(1, 2))  # one reward: no spread


def test_constant_group_is_exactly_zero_in_fp32():
    # 0.1 is not representable: mean(0.1, 0.1, 0.1) − 0.1 is a rounding residue, and residue/eps would explode
    r = torch.full((1, 3), 0.1, dtype=torch.float32)
    for scale in SCALES:
        a = group_advantages(r, scale)
        assert a.dtype == torch.float32
        assert torch.equal(a, torch.zeros(1, 3))


def test_zero_std_groups_hand_cases():
    r = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [NAN, 3.0, NAN], [NAN, NAN, NAN], [2.0, NAN, 2.0],
                      [2.0, NAN, 2.5]])
    assert zero_std_groups(r).tolist() == [True, False, True, True, True, False]


def test_unknown_scale_names_the_options():
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(1, 2), "grp")


@given(reward_batches, st.sampled_from(SCALES))
def test_matches_slow_reference(rows, scale):
    want = torch.tensor(reference_advantages(as_tensor(rows).tolist(), scale), dtype=torch.float64)
    torch.testing.assert_close(group_advantages(as_tensor(rows), scale), want, rtol=1e-12, atol=1e-12)


@given(reward_batches, st.sampled_from(SCALES))
def test_finite_zero_mean_per_group_and_zero_where_nan(rows, scale):
    r = as_tensor(rows)
    a = group_advantages(r, scale)
    assert torch.isfinite(a).all()
    finite = torch.isfinite(r)
    assert torch.equal(a[~finite], torch.zeros_like(a[~finite]))
    group_sums = torch.where(finite, a, 0.0).sum(dim=1)
    torch.testing.assert_close(group_sums, torch.zeros_like(group_sums), rtol=0, atol=1e-9)
    flat = zero_std_groups(r)
    assert torch.equal(a[flat], torch.zeros_like(a[flat]))  # exactly, not ±tiny


@given(reward_batches)
def test_group_scale_gives_unit_sample_std(rows):
    r = as_tensor(rows)
    a = group_advantages(r, "group")
    for row_r, row_a in zip(r, a):
        finite = row_a[torch.isfinite(row_r)].tolist()
        if len(set(row_r[torch.isfinite(row_r)].tolist())) >= 2:
            assert statistics.stdev(finite) == pytest.approx(1.0, rel=1e-9)


@given(reward_batches, st.floats(0.1, 10.0), st.floats(-10.0, 10.0), st.sampled_from(["group", "batch"]))
def test_invariant_to_positive_affine_rewards(rows, a, b, scale):
    r = as_tensor(rows)
    torch.testing.assert_close(group_advantages(a * r + b, scale), group_advantages(r, scale),
                               rtol=1e-9, atol=1e-9)


@given(reward_batches, st.floats(0.1, 10.0), st.floats(-10.0, 10.0))
def test_none_scale_is_shift_invariant_and_scale_equivariant(rows, a, b):
    r = as_tensor(rows)
    torch.testing.assert_close(group_advantages(a * r + b, "none"), a * group_advantages(r, "none"),
                               rtol=1e-9, atol=1e-9)


@given(reward_batches, st.floats(-10.0, 10.0))
def test_zero_std_groups_agrees_with_distinct_finite_rewards(rows, b):
    r = as_tensor(rows)
    want = [len({x for x in row if not math.isnan(x)}) < 2 for row in r.tolist()]
    assert zero_std_groups(r).tolist() == want
    assert zero_std_groups(r + b).tolist() == want  # a shift never makes a flat group spread or vice versa


def test_rewards_that_differ_only_by_rounding_are_zero_variance():
    """A group of Hybrid rewards (0–20) equal up to 1e-6 (float rounding, e.g. sums of points in another order) has
    no signal: advantage 0, counted as zero-std; a real difference (one 0.05-point criterion) keeps full advantages.
    Tolerance: SPREAD_RTOL × the batch's largest |reward| (≥ 1), as the module docstring states."""
    from grpo.advantages import SPREAD_RTOL, group_advantages, zero_std_groups
    rounding = torch.tensor([[7.5, 7.5 + 1e-6, 7.5, 7.5 - 1e-6], [0.30, 0.30, 0.30 + 1e-6, 0.30]], dtype=torch.float32)
    assert torch.equal(zero_std_groups(rounding), torch.tensor([True, True]))
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(rounding, scale=scale), torch.zeros(2, 4))
    real = torch.tensor([[7.5, 7.55, 7.5, 7.5]])
    adv = group_advantages(real)
    # by hand: mean 7.5125, sample std = 0.025, so the odd one out gets (0.0375)/0.025 = 1.5
    assert adv[0, 1].item() == pytest.approx(1.5, rel=1e-4) and not zero_std_groups(real).item()
    assert 1e-6 < SPREAD_RTOL * 20 < 0.05  # between float32 rounding and the smallest rubric difference
