"""Figures at extreme settings: no label overprints another, curves stay told apart, and
block-map colours stay distinct from each other and from the states."""

import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from paged_kv import plots
from paged_kv.plots._style import CURVE_STYLES, curve_style, overlapping_labels
from paged_kv.plots.block_map import OWNER_COLORS, owner_colors
from paged_kv.sim.accounting import CATEGORIES
from paged_kv.studies.block_map import scripted_serving


def _lab(colour) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour."""
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _distance(a, b) -> float:
    return float(np.linalg.norm(_lab(a) - _lab(b)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_the_overlap_check_sees_an_overprint():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "first label")
    ax.text(0.52, 0.5, "second label")
    assert ("first label", "second label") in overlapping_labels(fig)
    ax.texts[1].set_position((0.5, 0.1))
    assert overlapping_labels(fig) == []


def _fragmentation_table(token_share: float, schemes: int) -> pd.DataFrame:
    rest = (100 - token_share) / 4
    return pd.DataFrame({
        "scheme": [f"scheme {i}" if i else "Max" for i in range(schemes)],
        "token_states_pct": token_share, "reservation_pct": rest, "internal_frag_pct": rest,
        "external_frag_pct": rest, "waste_pct": 100 - token_share,
        "paper_token_states_pct": [20.4, 26.8, 38.2, 96.3, 50.0, 60.0][:schemes],
    })


@pytest.mark.parametrize("token_share", [0.5, 3.0, 15.0, 50.0, 99.5])
@pytest.mark.parametrize("schemes", [1, 4, 6])
def test_fragmentation_labels_never_overprint(token_share, schemes):
    fig = plots.plot_fragmentation(_fragmentation_table(token_share, schemes))
    assert overlapping_labels(fig) == []


@pytest.mark.parametrize("token_share, inside", [(0.5, False), (5.0, False), (6.0, True),
                                                 (50.0, True)])
def test_fragmentation_label_of_a_thin_segment_goes_above_it(token_share, inside):
    fig = plots.plot_fragmentation(_fragmentation_table(token_share, 1))
    label = next(t for t in fig.axes[0].texts if t.get_text() == f"{token_share:.1f}")
    x, y = label.get_position()
    if inside:  # centred in the segment, white on its colour
        assert y == pytest.approx(token_share / 2) and label.get_color() == "white"
    else:  # above the segment (off the axis line), dark on the next category's colour
        assert y > token_share and label.get_va() == "bottom"
        assert label.get_color() != "white"


@pytest.mark.parametrize("workloads", [1, 2, 8])
def test_block_size_curves_are_told_apart_and_labels_clear(workloads):
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    frame = pd.DataFrame([{"workload": f"workload-{w}", "block_size": b, "waste_pct": 1.0}
                          for w in range(workloads) for b in sizes])  # all on one line
    fig = plots.plot_block_size(frame)
    lines = fig.axes[0].get_lines()
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == workloads
    assert overlapping_labels(fig) == []


def test_block_size_best_ranges_that_overlap_stay_apart():
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    frame = pd.DataFrame([{"workload": w, "block_size": b, "waste_pct": b / 4}
                          for w in ("sharegpt-like", "alpaca-like") for b in sizes])
    ranges = {"sharegpt-like": (16, 128), "alpaca-like": (16, 32)}  # the paper's: nested
    fig = plots.plot_block_size(frame, best_ranges=ranges)
    ax = fig.axes[0]
    bars = [line for line in ax.get_lines() if line.get_linewidth() == 5]
    assert [tuple(line.get_xdata()) for line in bars] == [(16, 128), (16, 32)]
    assert len({line.get_ydata()[0] for line in bars}) == 2  # one row each, no overlap
    assert not ax.patches  # no shaded spans on top of each other
    assert overlapping_labels(fig) == []


def test_hit_rate_curves_are_told_apart_even_when_equal():
    policies = ["arc", "belady", "clock", "fifo", "lfu", "lru"]
    capacities = [1_000, 3_000, 10_000, 30_000, 100_000, None]
    sweep = pd.DataFrame([{"policy": p, "capacity": c, "hit_rate": 0.25}
                          for p in policies for c in capacities])
    fig = plots.plot_hit_rates(sweep)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() in policies]
    assert len(lines) == len(policies)
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == len(policies)
    assert overlapping_labels(fig) == []


@pytest.mark.parametrize("widths, workloads", [((2,), 1), ((2, 4, 6), 2), ((2, 3, 4, 5, 6, 8), 4)])
def test_sharing_labels_never_overprint(widths, workloads):
    names = ["alpaca-like", "sharegpt-like", "azure-conv", "azure-code"][:workloads]
    frame = pd.DataFrame([{"workload": w, "sampling": s, "n": n, "saved_pct": 10.0 * n,
                           "cow_copies": 5 * n}
                          for w in names for s in ("parallel", "beam") for n in widths])
    fig = plots.plot_sharing(frame)
    assert overlapping_labels(fig) == []


def test_timeline_is_in_seconds_readable_at_70k_steps_and_skips_zero_categories():
    steps = 70_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"step": np.arange(steps), "time_s": np.arange(steps) * 0.02})
    for cat in CATEGORIES:
        frame[cat] = rng.integers(0, 100, steps)
    frame["external_frag"] = 0
    fig = plots.plot_timeline(frame, title="opt-13b, 12 GiB, sharegpt, paged (block 16)")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time (s)"
    assert ax.get_xlim()[1] == pytest.approx(frame["time_s"].iloc[-1])
    drawn = ax.collections[0].get_paths()[0].vertices
    assert len(drawn) < 5_000  # averaged over spans of time, not 70k jagged steps
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert plots.LABELS["external_frag"] not in legend and plots.LABELS["free"] in legend
    assert overlapping_labels(fig) == []


def test_owner_colours_are_distinct_and_never_look_like_a_state():
    for i, a in enumerate(OWNER_COLORS):
        for b in OWNER_COLORS[i + 1:]:
            assert _distance(a, b) >= 20, (a, b)
        for state, c in plots.BLOCK_MAP_COLORS.items():
            assert _distance(a, c) >= 35, (a, state)


def test_owners_in_the_pool_together_never_share_a_colour():
    recorder, _ = scripted_serving(num_blocks=64, num_requests=40, seed=1)
    states = recorder.states
    colour = owner_colors(states)
    owners = sorted(colour)
    assert len(owners) == 40 and len(set(colour.values())) == len(OWNER_COLORS)
    # the first len(OWNER_COLORS) requests each get a colour of their own
    assert len({colour[o] for o in owners[: len(OWNER_COLORS)]}) == len(OWNER_COLORS)
    for snapshot in states:
        present = {int(o) for o in snapshot[snapshot >= 0]}
        assert len({colour[o] for o in present}) == len(present)


@pytest.mark.parametrize("num_requests, num_blocks", [(1, 26), (30, 96)])
def test_block_map_labels_never_overprint(num_requests, num_blocks):
    recorder, _ = scripted_serving(num_blocks=num_blocks, num_requests=num_requests,
                                   max_running=6, seed=0)
    fig = plots.plot_block_map(recorder)
    assert overlapping_labels(fig) == []


def test_a_huge_block_map_with_hundreds_of_owners_keeps_its_labels_clear():
    rng = np.random.default_rng(0)
    states = rng.integers(-3, 300, size=(400, 4096))
    recorder = SimpleNamespace(states=states, fill=np.ones_like(states), block_size=1)
    fig = plots.plot_block_map(recorder)
    assert overlapping_labels(fig) == []
    assert "colours reused" in fig.axes[0].get_legend().get_texts()[0].get_text()


def test_curve_styles_differ():
    styles = [tuple(curve_style(i)[k] for k in ("marker", "linestyle"))
              for i in range(len(CURVE_STYLES))]
    assert len(set(styles)) == len(CURVE_STYLES)


def test_sharing_shades_the_papers_range_only_where_the_frame_carries_it():
    frame = pd.DataFrame([{"workload": "alpaca-like", "sampling": s, "n": n,
                           "saved_pct": 10.0 * n} for s in ("parallel", "beam") for n in (2, 4)])
    assert len(plots.plot_sharing(frame).axes[0].collections) == 0  # not the paper's setting
    frame["paper_low_pct"], frame["paper_high_pct"] = 6.1, 9.8
    ax = plots.plot_sharing(frame).axes[0]
    assert len(ax.collections) == 2
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend.count("vLLM paper Fig. 15 range") == 1
