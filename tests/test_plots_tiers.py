"""The tier figures: bars stacked GPU, host, disk with the frame's heights; labels clear."""

import matplotlib
import pandas as pd
import pytest

from paged_kv import plots

matplotlib.use("Agg")


def tier_frame(hosts, disk=0):
    rows = []
    for i, host in enumerate(hosts):
        rows.append({"host_capacity": host, "disk_capacity": disk, "policy": "lru",
                     "placement": "write_back", "capacity": 100,
                     "gpu_hit_rate": 0.1, "host_hit_rate": 0.05 * i,
                     "disk_hit_rate": 0.3 if disk else 0.0})
    return pd.DataFrame(rows)


def test_bars_stack_gpu_host_disk_with_the_frames_heights():
    frame = tier_frame([0, 1000, 2000], disk=5000)
    fig = plots.plot_tier_hit_rates(frame, reference={1000: 0.5}, reference_label="paper")
    ax = fig.axes[0]
    heights = [round(p.get_height(), 9) for p in ax.patches]
    bottoms = [round(p.get_y(), 9) for p in ax.patches]
    assert heights == [10, 10, 10, 0, 5, 10, 30, 30, 30]
    assert bottoms == [0, 0, 0, 10, 10, 10, 10, 15, 20]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1000", "2000"]
    star = [line for line in ax.lines if line.get_label() == "paper"][0]
    assert list(star.get_xdata()) == [1] and list(star.get_ydata()) == [50]
    assert plots.overlapping_labels(fig) == []


def test_a_tier_that_serves_nothing_has_no_bars_nor_legend_entry():
    fig = plots.plot_tier_hit_rates(tier_frame([0, 10]))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["served by the GPU", "served by the host tier"]


@pytest.mark.parametrize("groups", [1, 4, 7])
def test_a_tiered_sweep_gets_one_panel_per_setting(groups):
    frames = [tier_frame([0, 100, 10_000_000], disk=d).assign(capacity=c)
              for c, d in [(10 * g, 0) for g in range(groups)]]
    fig = plots.plot_tier_sweep(pd.concat(frames, ignore_index=True), title="sweep")
    assert sum(ax.get_visible() for ax in fig.axes) == groups
    assert plots.overlapping_labels(fig) == []


def study_frame():
    rows = []
    for placement in ("write_through", "write_back", "selective"):
        for policy in ("lru", "arc"):
            for disk in (0, 10**13):
                for i, host in enumerate((0, 16 * 10**9, 512 * 10**9)):
                    rows.append({"placement": placement, "tier_policy": policy,
                                 "host_bytes": host, "disk_bytes": disk,
                                 "host_tokens": 10**6 * i, "hit_rate": 0.1 + 0.1 * i,
                                 "gpu_hit_rate": 0.1, "host_hit_rate": 0.1 * i,
                                 "disk_hit_rate": 0.5 if disk else 0.0,
                                 "ttft_mean_s_serial": 0.5 - 0.1 * i,
                                 "ttft_p99_s_serial": 2.0 - 0.1 * i,
                                 "ttft_mean_s_layerwise": 0.4 - 0.1 * i,
                                 "ttft_p99_s_layerwise": 1.9 - 0.1 * i,
                                 "recompute_mean_s": 0.6, "recompute_p99_s": 3.0})
    return pd.DataFrame(rows)


def test_the_study_figure_and_the_ttft_figure_keep_their_labels_clear():
    frame = study_frame()
    fig = plots.plot_tier_study(frame, frame[frame["disk_bytes"] == 0],
                                sessions_reference={128 * 10**9: 0.86},
                                mooncake_reference={10**6: 0.09})
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
    assert plots.overlapping_labels(fig) == []
    one = frame[(frame["placement"] == "write_back") & (frame["tier_policy"] == "lru")
                & (frame["disk_bytes"] == 0)]
    ttft = plots.plot_ttft(one, x="host_bytes", format_x=lambda v: f"{v / 1e9:g}")
    lines = {line.get_label(): list(line.get_ydata()) for line in ttft.axes[0].lines}
    assert lines["mean, layerwise load"] == pytest.approx([0.4, 0.3, 0.2])
    assert plots.overlapping_labels(ttft) == []
