"""The serving simulator: hand-worked accounting, preemption, sharing, reproducibility."""

import re

import numpy as np
import pandas as pd
import pytest

from paged_kv.sim import Request, Workload
from paged_kv.sim.accounting import CATEGORIES
from paged_kv.sim.errors import SchemeReusedError, UnservableRequestError, UnsupportedError
from paged_kv.sim.scheduler import SchedulerConfig, StepTimeModel, simulate
from paged_kv.sim.schemes import ContiguousScheme, PagedScheme
from paged_kv.sim.workloads import sharegpt_like

UNIT_STEPS = SchedulerConfig(step_time=StepTimeModel(base_s=1.0, per_token_s=0.0),
                             max_num_batched_tokens=64)


def two_requests():
    # A: prompt 5, output 3 (final 8); B: prompt 3, output 2 (final 5); both at t=0
    return Workload("two", [Request(0, 0.0, 5, 3), Request(1, 0.0, 3, 2)])


def categories(result):
    return {c: result.steps[c].tolist() for c in CATEGORIES}


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        # Max reserves 16 each: A [0,16) and B [16,32); B leaves after step 2
        (ContiguousScheme(32, "max", 16), dict(
            token_states=[8, 10, 12, 8], reservation=[5, 3, 1, 0],
            internal_frag=[19, 19, 19, 8], external_frag=[0, 0, 0, 0], free=[0, 0, 0, 16])),
        # Pow2 rounds the output only: A reserves 5 + 4 = 9 (1 never used), B 3 + 2 = 5;
        # the buddy allocator places them in chunks of 16 and 8 (7 + 3 slots of rounding)
        (ContiguousScheme(32, "pow2", 16), dict(
            token_states=[8, 10, 12, 8], reservation=[5, 3, 1, 0],
            internal_frag=[1, 1, 1, 1], external_frag=[10, 10, 10, 7], free=[8, 8, 8, 16])),
        # the same reservations placed first-fit: no rounding
        (ContiguousScheme(32, "pow2", 16, allocator="first-fit"), dict(
            token_states=[8, 10, 12, 8], reservation=[5, 3, 1, 0],
            internal_frag=[1, 1, 1, 1], external_frag=[0, 0, 0, 0], free=[18, 18, 18, 23])),
        # Oracle: exactly 8 and 5, in chunks of 8 and 8 (B's chunk rounds 3 slots)
        (ContiguousScheme(32, "oracle", 16), dict(
            token_states=[8, 10, 12, 8], reservation=[5, 3, 1, 0],
            internal_frag=[0, 0, 0, 0], external_frag=[3, 3, 3, 0], free=[16, 16, 16, 24])),
        (ContiguousScheme(32, "oracle", 16, allocator="first-fit"), dict(
            token_states=[8, 10, 12, 8], reservation=[5, 3, 1, 0],
            internal_frag=[0, 0, 0, 0], external_frag=[0, 0, 0, 0], free=[19, 19, 19, 24])),
        # Paged, blocks of 4: A holds 2 blocks, B 1 then 2 at step 2 (its 5th token);
        # B's second block has 3 slots it never uses
        (PagedScheme(8, 4, watermark=0.0), dict(
            token_states=[8, 10, 12, 8], reservation=[4, 2, 1, 0],
            internal_frag=[0, 0, 3, 0], external_frag=[0, 0, 0, 0], free=[20, 20, 16, 24])),
    ],
    ids=["max", "pow2", "pow2-first-fit", "oracle", "oracle-first-fit", "paged"],
)
def test_hand_worked_two_requests(scheme, expected):
    result = simulate(two_requests(), scheme, UNIT_STEPS)
    assert result.steps["step"].tolist() == [0, 1, 2, 3]
    assert result.steps["time_s"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert categories(result) == expected
    assert result.requests["finish_step"].tolist() == [3, 2]
    assert result.requests["generated"].tolist() == [3, 2]


def test_external_fragmentation_is_the_hole_too_small_for_the_head():
    # Max on 40 slots: A and B take 32; C (final 16) waits, the 8-slot hole is useless
    work = Workload("three", [Request(0, 0.0, 5, 3), Request(1, 0.0, 3, 2),
                              Request(2, 0.0, 10, 6)])
    result = simulate(work, ContiguousScheme(40, "max", 16), UNIT_STEPS)
    got = categories(result)
    assert got["external_frag"] == [8, 8, 8] + [0] * 7
    assert got["token_states"] == [8, 10, 12, 18, 11, 12, 13, 14, 15, 16]
    assert got["reservation"] == [5, 3, 1, 6, 5, 4, 3, 2, 1, 0]
    assert got["internal_frag"] == [19, 19, 19, 8] + [0] * 6
    assert got["free"] == [0, 0, 0, 8] + [24] * 6
    assert result.requests["admit_step"].tolist() == [0, 0, 3]


def workload(n=60, seed=3):
    return sharegpt_like(n, rate=50.0, seed=seed, max_len=512)


SCHEMES = [
    lambda: ContiguousScheme(4096, "max", 512),
    lambda: ContiguousScheme(4096, "pow2", 512),
    lambda: ContiguousScheme(4096, "oracle", 512),
    lambda: PagedScheme(256, 16),
]


@pytest.mark.parametrize("make", SCHEMES, ids=["max", "pow2", "oracle", "paged"])
def test_accounting_adds_up_to_the_pool_at_every_step(make):
    scheme = make()
    result = simulate(workload(), scheme)
    steps = result.steps
    total = sum(steps[c] for c in CATEGORIES)
    assert (total == scheme.capacity).all()
    assert (steps[list(CATEGORIES)] >= 0).all().all()
    assert (steps["step"].diff().dropna() == 1).all()
    assert (result.requests["generated"] == result.requests["output_len"]).all()


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_finishes_every_request_with_its_output(mode):
    scheme = PagedScheme(48, 16, num_host_blocks=512)  # tight: preemption is certain
    config = SchedulerConfig(preemption=mode)
    result = simulate(workload(80), scheme, config)
    req = result.requests
    assert req["preemptions"].sum() > 0
    assert (req["generated"] == req["output_len"]).all()
    assert (req["finish_step"] >= req["admit_step"]).all()
    if mode == "swap":
        assert req["swaps"].sum() == req["preemptions"].sum()
        assert scheme.cache.stats().blocks_swapped_in == scheme.cache.stats().blocks_swapped_out
    else:
        assert req["recomputed_tokens"].sum() > 0 and req["swaps"].sum() == 0
    assert scheme.cache.num_used_blocks == 0 and len(scheme.cache) == 0
    scheme.cache.check_invariants()


@pytest.mark.parametrize(("sampling", "n"), [("parallel", 4), ("beam", 3)])
def test_sharing_frees_every_block_at_the_end(sampling, n):
    scheme = PagedScheme(400, 16, num_host_blocks=100)
    config = SchedulerConfig(sampling=sampling, n=n, seed=1)
    result = simulate(workload(40), scheme, config)
    assert scheme.cache.num_used_blocks == 0 and scheme.cache.host.num_used == 0
    scheme.cache.check_invariants()
    assert (result.requests["generated"] == result.requests["output_len"]).all()
    assert result.cow_copies > 0
    assert result.summary()["sharing_saved_pct"] > 0
    assert (result.steps["logical"] >= result.steps["used"]).all()


def test_same_seed_same_frames_and_a_different_seed_differs():
    def run(seed):
        scheme = PagedScheme(300, 16)
        return simulate(workload(50, seed=seed), scheme,
                        SchedulerConfig(sampling="beam", n=2, seed=seed))

    a, b, c = run(5), run(5), run(6)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert not a.steps.equals(c.steps)


def test_bad_inputs():
    work = two_requests()
    with pytest.raises(UnservableRequestError, match="cannot fit"):
        simulate(work, PagedScheme(1, 4))
    # a contiguous scheme reserves one range per sequence: two ranges of 16 do not fit 16
    with pytest.raises(UnservableRequestError, match="cannot fit"):
        simulate(work, ContiguousScheme(16, "max", 16), SchedulerConfig(sampling="beam", n=2))
    with pytest.raises(UnsupportedError, match="host pool"):
        simulate(work, PagedScheme(8, 4), SchedulerConfig(preemption="swap"))
    with pytest.raises(ValueError, match="valid names"):
        ContiguousScheme(32, "max", 16, allocator="slab")
    with pytest.raises(ValueError, match="valid names"):
        ContiguousScheme(32, "buddy", 16)
    with pytest.raises(ValueError, match="preemption"):
        SchedulerConfig(preemption="drop")
    with pytest.raises(ValueError, match="base_s"):
        StepTimeModel(base_s=0.0)


@pytest.mark.parametrize(("call", "named"), [
    (lambda w: simulate(list(w), PagedScheme(8, 4)), "Workload"),  # AttributeError
    (lambda w: simulate(w, "paged"), "MemoryScheme"),
    (lambda w: simulate(w.head(0), PagedScheme(8, 4)), "no requests"),  # KeyError later
    (lambda w: simulate(w, PagedScheme(8, 4), "fast"), "SchedulerConfig"),
    (lambda w: SchedulerConfig(seed="a"), "seed"),  # accepted; TypeError in simulate
    (lambda w: SchedulerConfig(seed=-1), "seed"),
    (lambda w: StepTimeModel(base_s=float("inf")), "base_s"),  # accepted: infinite steps
    (lambda w: StepTimeModel(base_s="1"), "base_s"),  # TypeError
])
def test_simulate_refuses_bad_arguments_in_one_line(call, named):
    with pytest.raises(ValueError, match=named):
        call(two_requests())


@pytest.mark.parametrize(("make", "named"), [
    (lambda: ContiguousScheme(32, "max", 0), "max_seq_len"),  # accepted; failed at admission
    (lambda: ContiguousScheme(32, "max", 16.0), "max_seq_len"),  # AttributeError
    (lambda: ContiguousScheme(32, "max", "16"), "max_seq_len"),  # TypeError
    (lambda: ContiguousScheme(0, "max", 16), "capacity"),
    (lambda: PagedScheme(8, 4, watermark="0.1"), "watermark"),  # TypeError
])
def test_schemes_refuse_bad_sizes_naming_them(make, named):
    with pytest.raises(ValueError, match=named):
        make()


def test_arrivals_map_onto_steps_through_the_step_time():
    # B arrives at 2.5 s; steps take 1 s: it is admitted at step 3 (starting at 3.0 s)
    work = Workload("late", [Request(0, 0.0, 4, 6), Request(1, 2.5, 4, 1)])
    result = simulate(work, PagedScheme(8, 4, watermark=0.0), UNIT_STEPS)
    assert result.requests["admit_step"].tolist() == [0, 3]
    assert result.requests["admit_time"].tolist() == [0.0, 3.0]
    np.testing.assert_array_equal(result.steps["running"], [1, 1, 1, 2, 2, 1, 1])


def test_a_request_done_with_its_last_token_is_finished_not_preempted():
    # parallel sampling under swap pressure: finishing groups and growing groups meet
    # at the same step; the finished one must leave, not be swapped out at full length
    scheme = PagedScheme(160, 16, num_host_blocks=2000)
    config = SchedulerConfig(sampling="parallel", n=2, preemption="swap")
    result = simulate(sharegpt_like(120, rate=20.0, seed=0, max_len=1024), scheme, config)
    req = result.requests
    assert req["swaps"].sum() > 0
    assert (req["generated"] == req["output_len"]).all()
    scheme.cache.check_invariants()


def test_prefix_caching_in_the_simulator_saves_prefill_on_a_real_trace():
    from paged_kv.sim import load_trace

    work = load_trace("mooncake-conversation").filter_max_len(16_384).head(60)
    runs = {}
    for caching in (False, True):
        scheme = PagedScheme(4096, 16, prefix_caching=caching)
        runs[caching] = simulate(work, scheme, SchedulerConfig(max_num_batched_tokens=16_384))
        assert scheme.cache.num_used_blocks == 0
        scheme.cache.check_invariants()
    off, on = runs[False].requests, runs[True].requests
    assert off["cached_tokens"].sum() == 0
    assert on["cached_tokens"].sum() > 0
    assert (on["cached_tokens"] % 16 == 0).all() and (on["cached_tokens"] < on["prompt_len"]).all()
    assert (on["generated"] == on["output_len"]).all()
    assert runs[True].steps["batched_tokens"].sum() < runs[False].steps["batched_tokens"].sum()


def test_the_simulators_errors_are_the_packages_own_classes():
    import paged_kv.core.errors as errors

    # one class per error: catching paged_kv.core.errors' class catches what simulate raises
    with pytest.raises(errors.UnservableRequestError, match="cannot fit"):
        simulate(two_requests(), PagedScheme(1, 4))
    scheme = PagedScheme(8, 4, watermark=0.0)
    simulate(two_requests(), scheme, UNIT_STEPS)
    with pytest.raises(errors.SchemeStateError, match="already served"):
        simulate(two_requests(), scheme, UNIT_STEPS)
    for error in (SchemeReusedError, UnservableRequestError, UnsupportedError):
        assert issubclass(error, errors.SimulationError) and issubclass(error, ValueError)


def test_a_scheme_serves_one_simulation():
    scheme = PagedScheme(8, 4, watermark=0.0)
    simulate(two_requests(), scheme, UNIT_STEPS)
    with pytest.raises(SchemeReusedError, match="already served"):
        simulate(two_requests(), scheme, UNIT_STEPS)


def test_recompute_that_could_not_fit_one_step_is_refused_up_front():
    work = Workload("long", [Request(0, 0.0, 60, 100), Request(1, 0.0, 60, 100)])
    config = SchedulerConfig(max_num_batched_tokens=64)
    with pytest.raises(ValueError, match="recompute up to 159 tokens"):
        simulate(work, PagedScheme(10, 16), config)
    # by swap the same workload runs: the prompt alone fits a step
    swap = SchedulerConfig(max_num_batched_tokens=64, preemption="swap")
    result = simulate(work, PagedScheme(12, 16, num_host_blocks=16), swap)
    assert (result.requests["generated"] == 100).all()
    # with no room on the host a swap falls back to recompute, which cannot fit a step:
    # the error says so (it blamed the watermark and an empty cache)
    with pytest.raises(UnservableRequestError, match="must recompute 95 tokens.*host pool"):
        simulate(work, PagedScheme(12, 16, num_host_blocks=1), swap)


def test_recomputed_requests_publish_only_their_prompts_full_blocks():
    scheme = PagedScheme(4096, 16, prefix_caching=True)
    request = Request(0, 0.0, 40, 5, block_keys=(7, 8), key_block_size=32)
    keys = scheme._block_keys(request)  # 2 full blocks of 16 + 8 tokens
    assert keys == [(7, 0), (7, 1)]


def test_a_trace_that_keys_fewer_blocks_than_its_prompt_caches_what_the_keys_cover():
    # one key over 8 tokens for a 20-token prompt (a Request may hold fewer keys than
    # blocks): the sub-blocks of the keyed block are shared, the rest is not
    # (this raised IndexError in PagedScheme._block_keys)
    work = Workload("short-keys", [Request(0, 0.0, 20, 2, (5,), 8),
                                   Request(1, 1.0, 20, 2, (5,), 8)])
    scheme = PagedScheme(100, 4, prefix_caching=True, watermark=0.0)
    assert scheme._block_keys(work[0]) == [(5, 0), (5, 1)]
    result = simulate(work, scheme, UNIT_STEPS)
    assert result.requests["cached_tokens"].tolist() == [0, 8]


def test_the_scheduler_never_asks_the_schemes_kind():
    from pathlib import Path

    import paged_kv.sim.scheduler as scheduler

    source = Path(scheduler.__file__).read_text()
    for word in ("PagedScheme", "ContiguousScheme", "self.paged",
                 "scheme.cache", "scheme.space", "scheme.policy"):
        assert word not in source, word
    # the one isinstance on a scheme checks the argument against the interface itself
    assert re.findall(r"isinstance\((?:self\.)?scheme\b[^)]*\)", source) == [
        "isinstance(scheme, MemoryScheme)"]


def test_unadmittable_request_is_a_typed_error():
    # fits the pool, but the watermark keeps half of it free: no admission ever
    work = Workload("one", [Request(0, 0.0, 20, 4)])
    with pytest.raises(UnservableRequestError, match="empty cache"):
        simulate(work, PagedScheme(8, 4, watermark=0.5), UNIT_STEPS)


def test_contiguous_parallel_sampling_reserves_a_range_per_sample():
    config = SchedulerConfig(sampling="parallel", n=3, max_num_batched_tokens=64,
                             step_time=StepTimeModel(1.0, 0.0))
    scheme = ContiguousScheme(64, "oracle", 16)
    result = simulate(two_requests(), scheme, config)
    steps = result.steps
    # A: 3 x 8 slots, B: 3 x chunks of 8 for 5 slots: 48 held at first, nothing shared
    assert steps["token_states"].iloc[0] == 3 * (5 + 3)
    assert steps["external_frag"].iloc[0] == 3 * 3
    assert result.summary(over="run")["sharing_saved_pct"] == 0.0
    assert (result.requests["generated"] == result.requests["output_len"]).all()
    assert scheme.space.used == 0


@pytest.mark.parametrize("parents", ["lineage", "uniform"])
def test_beam_search_shares_history_and_frees_everything(parents):
    scheme = PagedScheme(2000, 16, num_host_blocks=2000)
    config = SchedulerConfig(sampling="beam", n=4, preemption="swap", beam_parents=parents,
                             seed=5)
    result = simulate(workload(25), scheme, config)
    assert (result.requests["generated"] == result.requests["output_len"]).all()
    assert scheme.cache.num_used_blocks == 0 and len(scheme.cache) == 0
    scheme.cache.check_invariants()
    saved = result.summary(over="run")["sharing_saved_pct"]
    parallel = simulate(workload(25), PagedScheme(2000, 16, num_host_blocks=2000),
                        SchedulerConfig(sampling="parallel", n=4, preemption="swap"))
    assert saved > parallel.summary(over="run")["sharing_saved_pct"]
    again = simulate(workload(25), PagedScheme(2000, 16, num_host_blocks=2000), config)
    pd.testing.assert_frame_equal(again.steps, result.steps)


def test_more_beam_replacements_share_more():
    def saved(replacements):
        config = SchedulerConfig(sampling="beam", n=4, beam_replacements=replacements)
        result = simulate(workload(40), PagedScheme(2000, 16), config)
        return result.summary(over="run")["sharing_saved_pct"]

    assert saved(0.0) < saved(4.0) < saved(16.0)


def test_step_times_add_up_and_grow_with_the_kv_read():
    from paged_kv.sim.timing import calibrated_step_time

    work = sharegpt_like(200, rate=5.0, seed=1, max_len=2048)
    result = simulate(work, PagedScheme(983, 16), SchedulerConfig())
    steps = result.steps
    gaps = steps["time_s"].diff().iloc[1:].to_numpy()
    durations = steps["step_s"].iloc[:-1].to_numpy()
    busy = gaps < durations * 1.5  # idle jumps to the next arrival are the exception
    assert busy.mean() > 0.95
    np.testing.assert_allclose(gaps[busy], durations[busy], rtol=1e-9)
    # while the batch stays the same, each decode step reads more KV and takes longer
    same = ((steps["running"] == steps["running"].shift())
            & (steps["batched_tokens"] == steps["running"])
            & (steps["batched_tokens"].shift() == steps["running"]))
    growth = steps["step_s"].diff()[same]
    assert len(growth) > 1000 and (growth > 0).all()
    timer = calibrated_step_time()
    one = steps.iloc[[0]]  # the first step prefills the first request alone
    prompt = int(work[0].prompt_len)
    assert one["step_s"].iloc[0] == pytest.approx(timer.step_seconds(
        prompt, prompt, prompt * (prompt + 1) // 2, 16))


class _SwapCost(StepTimeModel):
    def swap_seconds(self, blocks, block_size):
        return 100.0 * blocks


def test_swaps_are_charged_to_the_step_that_makes_them():
    scheme = PagedScheme(48, 16, num_host_blocks=512)
    config = SchedulerConfig(preemption="swap", step_time=_SwapCost(1.0, 0.0))
    result = simulate(workload(80), scheme, config)
    swaps = int(result.requests["swaps"].sum())
    assert swaps > 0
    slow = result.steps[result.steps["step_s"] >= 100.0]
    stats = scheme.cache.stats()
    moved = stats.blocks_swapped_in + stats.blocks_swapped_out
    assert 0 < len(slow) <= 2 * swaps
    assert slow["step_s"].sum() == pytest.approx(100.0 * moved + len(slow) * 1.0)
