"""Mooncake comparisons (Fig. 9, the output what-if), published numbers, and the
synthetic trace generator."""

import sys

import numpy as np
import pytest

from paged_kv.sim import Request, Workload, load_trace
from paged_kv.sim.published import MOONCAKE_FIG9_HIT_RATE, MOONCAKE_TABLE1_HIT_RATE
from paged_kv.sim.replay import replay
from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.replay_compiled import compiled_replay
from paged_kv.sim.replay_mooncake import fig9_table, unbounded_variants, with_output_blocks
from paged_kv.sim.replay_synthetic import synthetic_prefix_trace

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_output_blocks_publish_the_answer_before_the_next_turn():
    bs = 4
    reqs = [
        Request(0, 0.0, 9, 6, (1, 2, 3), bs),      # answered with 6 tokens: 15 -> 3 blocks
        Request(1, 1.0, 17, 1, (1, 2, 7, 8, 9), bs),  # continues 0: blocks 7 cover the answer
        Request(2, 2.0, 9, 1, (1, 5, 6), bs),       # shares block 1 only: not a continuation
    ]
    what_if, real = with_output_blocks(Workload("t", reqs))
    assert real.tolist() == [True, False, True, True]
    assert what_if[1].block_keys == (1, 2, 7) and what_if[1].prompt_len == 3 * bs + 1
    hits = replay(what_if, None, "lru").requests["hit_blocks"][real].tolist()
    assert hits == [0, 3, 1]  # without the answer cached: [0, 2, 1]
    assert replay(Workload("t", reqs), None, "lru").requests["hit_blocks"].tolist() == [0, 2, 1]


def test_fig9_table_and_variants_on_a_head():
    head = load_trace("mooncake-synthetic").head(300)
    table = fig9_table(head)
    assert table["capacity_blocks"].tolist()[:4] == [1953, 7812, 19531, 97656]
    assert table["replay"].iloc[-1] == pytest.approx(replay(head, None, "lru").hit_rate)
    assert (table["replay_with_outputs"] >= table["replay"] - 1e-12).all()
    variants = unbounded_variants(head).set_index("variant")["hit_rate"]
    assert variants["the replay's rules (tokens)"] == pytest.approx(table["replay"].iloc[-1])


def test_published_mooncake_numbers():
    assert MOONCAKE_FIG9_HIT_RATE["mooncake-conversation"][None] == 0.401
    assert MOONCAKE_FIG9_HIT_RATE["mooncake-synthetic"][50_000_000] == 0.658
    assert [MOONCAKE_TABLE1_HIT_RATE["lru"][c] for c in (1_000, 10_000, 30_000, 50_000,
                                                          100_000, None)] == [
        0.30, 0.40, 0.48, 0.50, 0.51, 0.51]
    for row in MOONCAKE_TABLE1_HIT_RATE.values():  # LRU never behind the other two
        for capacity, rate in row.items():
            assert MOONCAKE_TABLE1_HIT_RATE["lru"][capacity] >= rate


def test_synthetic_trace_is_seeded_and_shaped():
    a = synthetic_prefix_trace(3000, seed=4)
    assert len(a) == 3000 and a.checksum == synthetic_prefix_trace(3000, seed=4).checksum
    assert a.checksum != synthetic_prefix_trace(3000, seed=5).checksum
    assert a.metadata["seed"] == 4 and a.block_size == 512
    counts = np.diff(a.offsets)
    assert (a.prompt_lens > (counts - 1) * 512).all() and (a.prompt_lens <= counts * 512).all()
    # shared prefixes and multi-turn sessions: an unbounded cache hits a lot
    unbounded = compiled_replay(a, None, "lru").hit_rate
    assert 0.3 < unbounded < 0.95
    small = a.head(200)
    expected = replay(small.to_workload(), 50, "arc").requests["hit_blocks"].tolist()
    assert compiled_replay(small, 50, "arc").requests["hit_blocks"].tolist() == expected
    with pytest.raises(ValueError, match="zipf_s"):
        synthetic_prefix_trace(10, zipf_s=0)


def test_distributed_and_bench_extras_are_declared_in_both_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    environment = (root / "environment.yml").read_text()
    for requirement in extras["distributed"] + extras["bench"]:
        assert requirement in environment
    assert "distributed" in (root / "Makefile").read_text()  # CI installs it


def test_trace_arrays_of_a_file_equal_the_shipped_trace(tmp_path):
    head = load_trace("mooncake-conversation", limit=50)
    path = tmp_path / "t.csv"
    path.write_text("input_length,hash_ids\n" + "".join(
        f"{r.prompt_len},{' '.join(map(str, r.block_keys))}\n" for r in head))
    assert TraceArrays.from_workload(load_trace(str(path))).checksum == \
        TraceArrays.from_workload(head).checksum


@pytest.mark.parametrize(("name", "rate"), [("mooncake-conversation", 0.3734),
                                            ("mooncake-synthetic", 0.6504)])
def test_the_unbounded_rates_the_data_readme_quotes(name, rate):
    arrays = TraceArrays.from_workload(load_trace(name))
    assert compiled_replay(arrays, None, "lru").hit_rate == pytest.approx(rate, abs=5e-5)
