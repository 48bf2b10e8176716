"""Figures of the studies (matplotlib), shared by the command line and the notebooks.

One module per figure; each function draws on a given or new Axes and returns the
Figure, and `save` writes it. Colours are fixed per memory category (`COLORS`) so
figures compare at a glance; `curve_style` tells overlapping curves apart by marker and
line style, and `overlapping_labels` lists the labels of a figure that overprint each
other (the tests render every figure at extreme settings and expect none).

=======================  ============================================================
function                 draws
=======================  ============================================================
plot_fragmentation       vLLM Fig. 2: where the KV memory goes, per scheme
plot_latency             vLLM Fig. 12: normalised latency against request rate
plot_block_size          paged waste against block size
plot_timeline            memory categories over one run
plot_hit_rates           prefix-cache hit rate against capacity, per eviction policy
plot_sharing             memory saved by sharing (parallel sampling, beam search)
plot_generation          paged vs dense logits per step; tokens computed per mode
plot_block_map           the physical block pool over time
plot_quantization_error  attention error of a quantized KV cache against key outliers
plot_tier_hit_rates      hit rate served by the GPU, host and disk tiers (stacked)
plot_tier_sweep          one plot_tier_hit_rates panel per setting of a tiered sweep
plot_tier_study          the tier study's figure: hit rate by tier against host capacity
plot_placements          total hit rate against host capacity, per placement policy
plot_ttft                time to first token against host capacity, per load mode
=======================  ============================================================
"""

from paged_kv.plots._style import (
    COLORS,
    LABELS,
    curve_style,
    figures_dir,
    new_axes,
    overlapping_labels,
    save,
)
from paged_kv.plots.block_map import BLOCK_MAP_COLORS, plot_block_map
from paged_kv.plots.block_size import plot_block_size
from paged_kv.plots.fragmentation import plot_fragmentation
from paged_kv.plots.generation import plot_generation
from paged_kv.plots.hit_rates import plot_hit_rates
from paged_kv.plots.quantization import plot_quantization_error
from paged_kv.plots.sharing import plot_sharing
from paged_kv.plots.throughput import plot_latency
from paged_kv.plots.tiers import (
    TIER_COLORS,
    plot_placements,
    plot_tier_hit_rates,
    plot_tier_study,
    plot_tier_sweep,
    plot_ttft,
)
from paged_kv.plots.timeline import plot_timeline

__all__ = [
    "BLOCK_MAP_COLORS",
    "COLORS",
    "LABELS",
    "TIER_COLORS",
    "curve_style",
    "figures_dir",
    "new_axes",
    "overlapping_labels",
    "plot_block_map",
    "plot_block_size",
    "plot_fragmentation",
    "plot_generation",
    "plot_hit_rates",
    "plot_latency",
    "plot_quantization_error",
    "plot_sharing",
    "plot_placements",
    "plot_tier_hit_rates",
    "plot_tier_study",
    "plot_tier_sweep",
    "plot_timeline",
    "plot_ttft",
    "save",
]
