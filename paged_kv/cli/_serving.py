"""Options of a serving simulation, shared by the commands that run one, and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from paged_kv.cli._parser import UsageError
from paged_kv.cli._preflight import check_memory, refuse_if_given
from paged_kv.cli._types import int_at_least, int_list, positive_number, seed

#: workloads whose arrival times are recorded in the trace (``--rate`` does not apply)
RECORDED_ARRIVALS = ("azure-conv", "azure-code")


def check_serving_options(args: argparse.Namespace) -> None:
    """The checks of a serving simulation's options (``--model``, ``--gpu``, ``--kv-gib``,
    ``--block-size``, ``--workload``, ``--rate``), run for every command that has them:
    the model and the GPU are presets, the KV pool holds one longest sequence (in whole
    blocks, with a block size), and ``--rate`` is refused for a trace with recorded
    arrivals (a command then prints no rate: `applies_rate`)."""
    from paged_kv.core.config import get_model  # noqa: PLC0415

    spec = None
    if isinstance(getattr(args, "model", None), str):
        try:
            spec = get_model(args.model)
        except ValueError as err:
            raise UsageError(f"argument --model: {err}") from None
    if spec is not None and isinstance(getattr(args, "kv_gib", None), float):
        slots = int(args.kv_gib * 2**30) // spec.bytes_per_token
        if slots < spec.max_seq_len:
            raise UsageError(
                f"argument --kv-gib: {args.kv_gib:g} GiB holds {slots:,} token slots of "
                f"{spec.name}, fewer than one {spec.max_seq_len}-token sequence"
            )
        block = getattr(args, "block_size", None)
        if isinstance(block, int):
            from paged_kv.core.config import CacheConfig  # noqa: PLC0415

            blocks = slots // block
            usable = blocks - (CacheConfig(block, max(1, blocks)).watermark_reserve_blocks
                               if blocks else 0)  # admission keeps the watermark free
            if usable * block < spec.max_seq_len:
                raise UsageError(
                    f"argument --block-size: the {slots:,}-slot pool holds {blocks} blocks of "
                    f"{block} tokens, {usable} of them admissible under the watermark: "
                    f"fewer than one {spec.max_seq_len}-token sequence"
                )
    if isinstance(getattr(args, "gpu", None), str):
        try:
            from paged_kv.sim.hardware import get_gpu  # noqa: PLC0415 - where GPU presets live
        except ImportError:
            get_gpu = None
        if get_gpu is not None:
            try:
                get_gpu(args.gpu)
            except ValueError as err:
                raise UsageError(f"argument --gpu: {err}") from None
    if getattr(args, "workload", None) in RECORDED_ARRIVALS and hasattr(args, "rate"):
        refuse_if_given(args, "--rate", f"{args.workload} keeps its recorded arrival times")


def kv_pool_slots(model: str, *, kv_dtype: str | None = None, kv_gib: float | None = None,
                  gpu: str = "A100-40GB") -> int:
    """Token slots of `model`'s KV (stored as `kv_dtype`) in `kv_gib` GiB, or by default in
    the model's KV budget on `gpu` (what the studies use)."""
    from paged_kv.core.config import get_model  # noqa: PLC0415
    from paged_kv.sim.hardware import get_gpu  # noqa: PLC0415
    from paged_kv.studies._common import default_kv_bytes  # noqa: PLC0415

    spec = get_model(model)
    if kv_dtype is not None:
        spec = spec.with_kv_dtype(kv_dtype)
    if kv_gib is not None:
        return int(kv_gib * 2**30) // spec.bytes_per_token
    try:
        return default_kv_bytes(spec, get_gpu(gpu)) // spec.bytes_per_token
    except ValueError as err:
        raise UsageError(f"argument --model: {err}") from None


def check_serving_memory(args: argparse.Namespace, *, requests: int, num_blocks: int,
                         flag: str, what: str, runs: int = 1) -> None:
    """Refuse (unless ``--allow-large``) a serving study whose `runs` simulations of
    `requests` requests over paged pools of `num_blocks` blocks, held at once, would not
    fit in memory (`paged_kv.sim.footprint.serving_bytes`). The message names `flag` (the
    option that sizes the requests) or ``--kv-gib`` when the pool is the larger part."""
    from paged_kv.sim.footprint import (  # noqa: PLC0415
        BYTES_PER_BLOCK,
        BYTES_PER_REQUEST,
        serving_bytes,
    )

    if num_blocks * BYTES_PER_BLOCK > requests * BYTES_PER_REQUEST and hasattr(args, "kv_gib"):
        flag, what = "--kv-gib", f"{what} over {num_blocks:,} blocks"
    check_memory(args, serving_bytes(requests, num_blocks=num_blocks, runs=runs), flag, what)


def applies_rate(args: argparse.Namespace) -> bool:
    """Whether ``--rate`` applies to this run's workload (not to recorded arrivals)."""
    return getattr(args, "workload", None) not in RECORDED_ARRIVALS


def add_model_options(parser: argparse.ArgumentParser, *, gpu: bool = False,
                      kv_dtype: bool = False) -> None:
    """Add ``--model`` (the simulator's model presets) and, when asked, ``--gpu`` (the GPU
    presets, which set the step time) and ``--kv-dtype`` (what the cache stores)."""
    from paged_kv.core.kv_dtype import KV_DTYPE_CHOICES  # noqa: PLC0415
    from paged_kv.sim.hardware import GPU_PRESETS, MODEL_COMPUTE  # noqa: PLC0415

    parser.add_argument("--model", default="opt-13b", choices=sorted(MODEL_COMPUTE),
                        help="model preset")
    if gpu:
        parser.add_argument("--gpu", default="A100-40GB", choices=list(GPU_PRESETS),
                            help="GPU preset (sets the step time)")
    if kv_dtype:
        parser.add_argument("--kv-dtype", default="auto", choices=KV_DTYPE_CHOICES,
                            help="what the KV cache stores: the model's dtype (auto), or "
                                 "int8 / fp8_e4m3 (bytes per token with their scales; the "
                                 "paper's columns are then left out: not its setting)")


def add_serving_options(parser: argparse.ArgumentParser, *, workloads: Sequence[str],
                        workload_help: str = "request lengths (and arrivals, for the Azure "
                                             "traces)",
                        block_size_help: str = "tokens per block of the paged cache",
                        rate: float = 10.0, num_requests: int | None = 2000,
                        seeds: Sequence[int] | None = None, gpu: bool = False,
                        kv_dtype: bool = False) -> None:
    """Add the options of a serving simulation: ``--workload`` (from `workloads`, the first
    is the default), the model options (`add_model_options`), ``--kv-gib``,
    ``--block-size``, ``--rate``, ``--num-requests`` (None: the command derives it) and
    ``--seed``, or ``--seeds`` (a comma-separated list, one run each) when `seeds` gives
    their default. `check_serving_options` checks them together."""
    parser.add_argument("--workload", default=workloads[0], choices=workloads,
                        help=workload_help)
    add_model_options(parser, gpu=gpu, kv_dtype=kv_dtype)
    parser.add_argument("--kv-gib", type=positive_number, default=12.0,
                        help="KV cache size in GiB")
    parser.add_argument("--block-size", type=int_at_least(1, 4096), default=16,
                        help=block_size_help)
    parser.add_argument("--rate", type=positive_number, default=rate,
                        help="arrivals per second (not for the Azure traces, which keep "
                             "their recorded arrivals)")
    parser.add_argument("--num-requests", type=int_at_least(1, 100_000), default=num_requests,
                        help="requests to serve" + (" (default: --rate x --duration)"
                                                    if num_requests is None else ""))
    if seeds is None:
        parser.add_argument("--seed", type=seed, default=0,
                            help="seed of lengths and arrivals")
    else:
        parser.add_argument("--seeds", type=int_list(0, 2**32 - 1), default=list(seeds),
                            help="comma-separated seeds of lengths and arrivals, one run each")


def unlike_paper(args: argparse.Namespace, model: Any) -> list[str]:
    """How this run's setting differs from the vLLM paper's serving setting
    (`paged_kv.sim.published.VLLM_FIG2_SETTING`: OPT-13B with FP16 KV on one A100-40GB,
    12 GiB of KV, ShareGPT), one short phrase per difference; empty when it does not
    differ, and only then do the paper's numbers stand beside ours. `model` is the run's
    `ModelSpec`; ``--gpu``, ``--kv-gib`` and ``--workload`` count where the command has
    them. The rate, duration, seeds, allocator and block size change the sample or a
    modelling choice, not the setting, and do not count."""
    from paged_kv.sim.published import VLLM_FIG2_SETTING as PAPER  # noqa: PLC0415

    differs = []
    if model.name != PAPER["model"]:
        differs.append(f"model {model.name}")
    if model.kv.quantized:
        differs.append(f"{model.kv.name} KV")
    gpu = getattr(args, "gpu", None)
    if isinstance(gpu, str) and gpu != PAPER["gpu"]:
        differs.append(f"GPU {gpu}")
    kv_gib = getattr(args, "kv_gib", None)
    if isinstance(kv_gib, float) and int(kv_gib * 2**30) != PAPER["kv_cache_bytes"]:
        differs.append(f"{kv_gib:g} GiB of KV")
    workload = getattr(args, "workload", None)
    if isinstance(workload, str) and workload.removesuffix("-like") != PAPER["workload"]:
        differs.append(f"workload {workload}")
    return differs


def without_paper(frame: pd.DataFrame, columns: Mapping[str, str],
                  differs: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """`frame` and `columns`, less the paper's numbers (names starting ``paper``) when
    `differs` (`unlike_paper`) is not empty, so that neither the table nor ``--output``
    puts them beside a setting the paper did not run."""
    if not differs:
        return frame, dict(columns)
    return (frame[[c for c in frame.columns if not str(c).startswith("paper")]],
            {key: header for key, header in columns.items() if not key.startswith("paper")})


def paper_note(differs: Sequence[str]) -> str:
    """The line that says why the paper's numbers are left out (empty when they are not)."""
    return (f"(the vLLM paper's numbers are left out: it did not run "
            f"{', '.join(differs)})\n" if differs else "")
