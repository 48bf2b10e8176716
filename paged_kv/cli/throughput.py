"""``paged-kv throughput``: the vLLM paper's Fig. 12, the rate each memory scheme sustains."""

from __future__ import annotations

import argparse
import math

import pandas as pd

from paged_kv.cli import add_command
from paged_kv.cli._common import (
    UsageError,
    add_allow_large,
    add_model_options,
    add_output_options,
    check_serving_memory,
    choice_list,
    emit,
    emit_table,
    kv_pool_slots,
    paper_note,
    positive_number,
    progress_enabled,
    seed,
    unlike_paper,
    without_paper,
    write_figure,
)

NAME = "throughput"
HELP = "vLLM Fig. 12: the request rate each memory scheme sustains, and the ratios"
DESCRIPTION = """\
Serve each workload at rising request rates on the four memory schemes with the
calibrated step time, and report the highest rate at which each keeps its normalised
latency (mean end-to-end latency per output token) at or under the threshold, with
paged memory's rate over Orca (Oracle)'s and Orca (Max)'s beside the paper's ranges
(vLLM: 1.7-2.7x Oracle and 2.7-8x Max on ShareGPT, §6.2). Defaults are the paper's
setting: OPT-13B on an A100-40GB with 12 GiB of KV, Poisson arrivals; the step time and
the length spreads are calibrated models (see paged_kv.sim.timing and workloads).
--batch-sizes adds Fig. 13's batch sizes; --shared-prefix adds Fig. 16's
shared-prefix workloads (LLaMA-13B)."""
WORKLOADS = ("sharegpt-like", "alpaca-like")
SCHEMES = ("max", "pow2", "oracle", "paged")


def register(subparsers) -> None:
    """Add ``throughput`` and its options."""
    parser = add_command(subparsers, __name__, NAME, HELP, DESCRIPTION)
    parser.add_argument("--workloads", type=choice_list(WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated workloads")
    parser.add_argument("--schemes", type=choice_list(SCHEMES), default=list(SCHEMES),
                        help="comma-separated memory schemes")
    add_model_options(parser, gpu=True, kv_dtype=True)
    parser.add_argument("--threshold", type=positive_number, default=0.25,
                        help="normalised latency (s/token) a sustained rate stays under")
    parser.add_argument("--duration", type=positive_number, default=900.0,
                        help="seconds of arrivals per run (the paper: 3600)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of lengths and arrivals")
    parser.add_argument("--curves", action="store_true",
                        help="run every rate of the grid (the figure's curves), not only "
                             "the search for the sustained rate")
    parser.add_argument("--batch-sizes", action="store_true",
                        help="also report Fig. 13's batch sizes (ShareGPT 2, Alpaca 30 req/s)")
    parser.add_argument("--shared-prefix", action="store_true",
                        help="also run Fig. 16's shared-prefix workloads (80, 341 tokens)")
    add_allow_large(parser)
    add_output_options(parser, figure=True, tables=("batch_sizes", "shared_prefix"))


def check(args: argparse.Namespace) -> None:
    """A figure needs the curves; a run at the top of the rate grid must fit in memory
    (unless --allow-large)."""
    from paged_kv.studies.throughput import RATES  # noqa: PLC0415

    if args.figure is not None and not args.curves:
        raise UsageError("argument --figure: draws the latency curves; add --curves")
    tops = [RATES[w][-1] for w in args.workloads]
    if args.shared_prefix:
        tops += [RATES[w][-1] for w in RATES if w.startswith("shared-prefix")]
    quantized = args.kv_dtype not in ("auto", None)
    top = max(tops) * (2 if quantized else 1)  # a quantized cache's grid runs to twice
    requests = max(1, math.ceil(top * args.duration))
    check_serving_memory(args, requests=requests,
                         num_blocks=kv_pool_slots(args.model, kv_dtype=args.kv_dtype,
                                                  gpu=args.gpu) // 16,
                         flag="--duration",
                         what=f"a run of {requests:,} requests ({top:g} req/s for "
                              f"{args.duration:g} s)")


def run(args: argparse.Namespace) -> int:
    """Run the study, print the sustained rates and the ratios beside the paper's."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.studies.throughput import (  # noqa: PLC0415
        RATES,
        batch_size_study,
        shared_prefix_study,
        throughput_study,
    )

    progress = progress_enabled(args)
    model = get_model(args.model).with_kv_dtype(args.kv_dtype)
    setting = dict(model=model, gpu=args.gpu, duration_s=args.duration, seed=args.seed)
    # a quantized cache holds about twice the tokens: carry the rate grids on to twice
    # their top in finer steps than the search's doubling past the top would take
    rates = None if not model.kv.quantized else {
        w: (*RATES[w], *(RATES[w][-1] * f for f in (1.25, 1.5, 1.75, 2.0)))
        for w in args.workloads}
    study = throughput_study(workloads=tuple(args.workloads), schemes=tuple(args.schemes),
                             rates=rates, threshold_s=args.threshold, curves=args.curves,
                             progress=progress, **setting)
    s = study.settings
    print(f"{s['model']} ({s['kv_dtype']} KV) on {s['gpu']}: {s['kv_slots']:,} KV token "
          f"slots; "
          f"{s['duration_s']:g} s of Poisson arrivals per run, seed {s['seed']}; a rate "
          f"is sustained while the normalised latency stays <= {s['threshold_s']:g} s/token")
    differs = unlike_paper(args, model)  # the paper's numbers only beside its setting
    print("Highest rate each scheme sustains, and paged memory's over it" + (
        "" if differs else " beside the vLLM paper's (ShareGPT, over OPT-13B/66B/175B, "
        "§6.2; no Alpaca ratios given)") + ":\n" + paper_note(differs))
    table, columns = without_paper(_with_ratios(study), {
        "workload": "workload", "scheme": "scheme", "sustained_rate": "sustained req/s|{:.2f}",
        "paged_over": "paged / scheme|{:.2f}", "paper": "paper (§6.2)"}, differs)
    emit(table, args, columns=columns, threshold_s=s["threshold_s"], kv_slots=s["kv_slots"],
         step_time=s["step_time"])
    if args.batch_sizes:
        batches = batch_size_study(workloads=tuple(args.workloads),
                                   schemes=tuple(args.schemes), progress=progress, **setting)
        print("\nAverage batched requests at Fig. 13's rates:\n")
        batches, columns = without_paper(batches, {
            "workload": "workload", "rate": "req/s|{:g}", "scheme": "scheme",
            "mean_requests": "batch|{:.2f}", "paper_mean_requests": "paper (Fig. 13)|{:.2f}"},
            differs)
        emit_table(batches, args, "batch_sizes", columns=columns)
    if args.shared_prefix:
        prefix = shared_prefix_study(threshold_s=args.threshold, progress=progress,
                                     duration_s=args.duration, seed=args.seed, gpu=args.gpu)
        print("\nShared prefix (LLaMA-13B, translation, Fig. 16): sustained req/s of Orca "
              "(Oracle) and of paged memory sharing the prefix through its prefix cache:\n")
        emit_table(prefix, args, "shared_prefix", columns={
            "prefix_len": "prefix tokens", "oracle_rate": "Oracle|{:.2f}",
            "paged_rate": "paged|{:.2f}", "speedup": "paged / Oracle|{:.2f}",
            "paper_speedup": "paper|{:.2f}"})
    if args.figure is not None:
        _figure(study, args)
    return 0


def _with_ratios(study) -> pd.DataFrame:
    """The sustained rates with paged memory's rate over each and the paper's range."""
    frame = study.sustained.copy()
    frame["paged_over"] = float("nan")
    frame["paper"] = "-"
    for _, r in study.ratios.iterrows():
        for key in ("oracle", "pow2", "max"):
            if f"paged_over_{key}" not in r or pd.isna(r[f"paged_over_{key}"]):
                continue
            at = (frame["workload"] == r["workload"]) & (frame["key"] == key)
            frame.loc[at, "paged_over"] = r[f"paged_over_{key}"]
            low, high = r[f"paper_{key}_low"], r[f"paper_{key}_high"]
            if not pd.isna(low):
                frame.loc[at, "paper"] = f"{low:g}-{high:g}x"
    return frame


def _figure(study, args: argparse.Namespace) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from paged_kv.plots import plot_latency  # noqa: PLC0415

    workloads = list(study.curves["workload"].drop_duplicates())
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 3.8),
                             squeeze=False)
    s = study.settings
    for ax, workload in zip(axes[0], workloads):
        plot_latency(study.curves[study.curves["workload"] == workload], ax=ax,
                     threshold_s=s["threshold_s"],
                     title=f"{s['model']}, {s['gpu']}: {workload}")
    fig.tight_layout()
    write_figure(fig, args)
