"""Multi-turn ShareGPT-style sessions: turns, prompts that grow by the history, block keys,
seeds, the context limit, bad input."""

import numpy as np
import pytest

from paged_kv.sim import published
from paged_kv.sim.conversations import SessionModel, multi_turn_workload, session_keys
from paged_kv.sim.replay_arrays import TraceArrays
from paged_kv.sim.workloads import SHAREGPT_LIKE


def sessions_of(workload, block_size):
    """Requests grouped by session (the key's high bits), in arrival order."""
    groups = {}
    for r in workload:
        groups.setdefault(r.block_keys[0] >> 22, []).append(r)
    return groups


def test_a_later_turn_starts_with_the_earlier_prompt_and_answer():
    w = multi_turn_workload(40, block_size=16, seed=3)
    groups = sessions_of(w, 16)
    assert len(groups) <= 40
    multi = [g for g in groups.values() if len(g) > 1]
    assert multi
    for turns in groups.values():
        times = [r.arrival_time for r in turns]
        assert times == sorted(times)
        for earlier, later in zip(turns, turns[1:]):
            # the later prompt holds the earlier prompt, its answer and a new message
            assert later.prompt_len > earlier.prompt_len + earlier.output_len
            full = earlier.prompt_len // 16
            assert later.block_keys[:full] == earlier.block_keys[:full]
    # one stream per session: a prompt's full blocks are the session's blocks 0..k-1
    r = multi[0][-1]
    session = r.block_keys[0] >> 22
    assert r.block_keys == session_keys(session, r.prompt_len, len(multi[0]) - 1, 16)


def test_session_keys_by_hand():
    assert session_keys(2, 40, 5, 16) == (2 << 22, 2 << 22 | 1, 2 << 22 | 1 << 21 | 5)
    assert session_keys(0, 32, 0, 16) == (0, 1)  # no partial block
    # a partial block's key differs from the full block later turns hold at that index
    assert session_keys(1, 20, 0, 16)[1] != session_keys(1, 40, 1, 16)[1]


def test_requests_are_in_arrival_order_with_ids_by_position_and_replay():
    w = multi_turn_workload(30, seed=1)
    assert [r.request_id for r in w] == list(range(len(w)))
    arrays = TraceArrays.from_workload(w)  # keys distinct within each request
    assert arrays.block_size == 16 and len(arrays) == len(w)
    assert w.metadata["sessions"] == 30
    assert w.metadata["turns_drawn"] == len(w)


def test_seeded_and_each_draw_from_its_own_stream():
    a = multi_turn_workload(25, seed=7)
    b = multi_turn_workload(25, seed=7)
    assert a.to_dataframe().equals(b.to_dataframe())
    assert not a.to_dataframe().equals(multi_turn_workload(25, seed=8).to_dataframe())
    # a longer think time moves arrivals only: the same prompts in some other order
    slow = multi_turn_workload(25, seed=7, model=SessionModel(think_time_s=600.0))
    assert sorted(r.prompt_len for r in slow) == sorted(r.prompt_len for r in a)
    assert [r.arrival_time for r in slow] != [r.arrival_time for r in a]


def test_turns_follow_the_published_statistics():
    model = SessionModel()
    assert model.mean_turns == published.CACHEDATTENTION_WORKLOAD["mean_turns"] == 5.75
    assert model.multi_turn_share == 0.73
    turns = model.draw_turns(200_000, np.random.default_rng(0))
    assert turns.min() == 1
    assert np.mean(turns > 1) == pytest.approx(0.73, abs=0.005)
    assert turns.mean() == pytest.approx(5.75, abs=0.05)


def test_the_context_limit_ends_a_session():
    limit = SessionModel(max_context=1_000)
    w = multi_turn_workload(200, model=limit, seed=0)
    assert all(r.prompt_len + r.output_len <= 1_000 for r in w)
    unlimited = multi_turn_workload(200, seed=0)
    dropped = w.metadata["turns_dropped_max_context"]
    assert dropped > 0
    assert len(w) + dropped == len(unlimited) == unlimited.metadata["turns_drawn"]


def test_lengths_of_a_turn_come_from_the_length_model():
    w = multi_turn_workload(300, seed=0)
    firsts = [g[0] for g in sessions_of(w, 16).values()]
    # a first turn's prompt is one message; its pair is within the per-turn limit
    assert all(r.prompt_len + r.output_len <= SessionModel().turn_max_len for r in firsts)
    assert SessionModel().lengths is SHAREGPT_LIKE


@pytest.mark.parametrize("kwargs, match", [
    ({"session_rate": 0}, "session_rate"),
    ({"think_time_s": -1.0}, "think_time_s"),
    ({"multi_turn_share": 1.5}, "multi_turn_share"),
    ({"mean_turns": 1.2}, "need more than 2"),
    ({"max_context": 1}, "max_context"),
    ({"lengths": "sharegpt"}, "LengthModel"),
])
def test_bad_session_models_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SessionModel(**kwargs)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_sessions"):
        multi_turn_workload(0)
    with pytest.raises(ValueError, match="block_size"):
        multi_turn_workload(3, block_size=0)
    with pytest.raises(ValueError, match="model"):
        multi_turn_workload(3, model="sharegpt")
