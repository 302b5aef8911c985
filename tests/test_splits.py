"""data.splits: hash splits are stable, proportional, order-independent; GRPO's criteria filter."""
import hashlib

from hypothesis import given, strategies as st
from scipy.stats import binomtest

from data import Sample
from data.splits import half_of, split, split_of
from rewards.rubric import Criterion, Rubric


def _sample(i, n_criteria=5):
    return Sample(f"id-{i}", [{"role": "user", "content": "q"}], Rubric([Criterion("c", 1.0)] * n_criteria))


def test_golden_assignments():
    """sha256("<seed>:split:<id>")[:8] / 2**64, computed once; a change here moves test samples into training."""
    assert [split_of(f"id-{i}") for i in range(12)] == GOLDEN
    assert split_of("id-0", seed="other") != split_of("id-0") or split_of("id-1", seed="other") != split_of("id-1")


GOLDEN = ['train', 'val', 'train', 'train', 'train', 'train', 'train', 'test', 'train', 'val', 'train', 'val']


def test_matches_hex_reference():
    for i in range(200):
        u = int(hashlib.sha256(f"s:split:x{i}".encode()).hexdigest()[:16], 16) / 16**16
        assert split_of(f"x{i}", val=0.25, test=0.15, seed="s") == ("test" if u < 0.15 else "val" if u < 0.4 else "train")


def test_proportions_match_fractions():
    n = 20000
    parts = [split_of(f"s{i}", val=0.1, test=0.2) for i in range(n)]
    for name, p in (("test", 0.2), ("val", 0.1), ("train", 0.7)):
        assert binomtest(parts.count(name), n, p).pvalue > 1e-4, name
    halves = [half_of(f"s{i}", sft=0.3) for i in range(n)]
    assert binomtest(halves.count("sft"), n, 0.3).pvalue > 1e-4


@given(st.permutations(list(range(30))))
def test_order_independent_and_partitioned(order):
    samples = [_sample(i, n_criteria=2 + i % 5) for i in order]
    parts = split(samples, val=0.2, test=0.2)
    ids = lambda k: {s.id for s in parts[k]}  # noqa: E731
    assert ids("train") | ids("val") | ids("test") == {s.id for s in samples}
    assert not (ids("train") & ids("val")) and not (ids("train") & ids("test")) and not (ids("val") & ids("test"))
    assert not (ids("sft") & ids("grpo")) and ids("sft") | ids("grpo") <= ids("train")
    assert all(len(s.rubric) >= 4 for s in parts["grpo"])
    dropped = {s.id for s in parts["train"] if half_of(s.id) == "grpo" and len(s.rubric) < 4}
    assert ids("sft") | ids("grpo") | dropped == ids("train")
    assert [s.id for s in parts["train"]] == [s.id for s in samples if s.id in ids("train")]  # input order kept
    assert ids("test") == {s.id for s in split([_sample(i) for i in range(30)], val=0.2, test=0.2)["test"]}


def test_build_cli(tmp_path):
    import json

    from data.build import main
    from data.loaders import load_samples, write_samples
    heart = [Sample(f"h{i}", [{"role": "user", "content": f"my blood pressure is 150/9{i}"}],
                    Rubric([Criterion("c", 1.0)] * (3 + i % 3))) for i in range(40)]
    other = [Sample(f"o{i}", [{"role": "user", "content": "knee clicks on stairs"}], Rubric([Criterion("c", 1.0)] * 5))
             for i in range(10)]
    write_samples(tmp_path / "in.jsonl", heart + other)
    assert main(["--rar", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"), "--val", "0.2"]) == 0
    got = {k: load_samples(tmp_path / "out" / f"{k}.jsonl") for k in ("sft", "grpo", "val", "test")}
    expected = split(load_samples(tmp_path / "in.jsonl")[:40], val=0.2)  # only the heart-related ones
    assert {k: [s.id for s in v] for k, v in got.items()} == {k: [s.id for s in expected[k]] for k in got}
    assert all(t == "heart:hypertension" for v in got.values() for s in v for t in s.tags)
    assert json.loads((tmp_path / "out" / "build.json").read_text())["kept"] == 40
