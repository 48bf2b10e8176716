"""Checks that run after parsing and before any work: options typed or not, the device
setting, and the CUDA simulator's time estimate."""

from __future__ import annotations

import argparse
import os
import sys

from paged_kv.cli._parser import UsageError


def given(args: argparse.Namespace, flag: str) -> bool:
    """Whether `flag` (``"--rate"``) was typed on the command line (not left at its
    default). Abbreviated options are refused by `Parser`, so this is exact."""
    typed = getattr(args, "_argv", ())
    return any(token == flag or token.startswith(flag + "=") for token in typed)


def refuse_if_given(args: argparse.Namespace, flag: str, why: str) -> None:
    """Raise `UsageError` naming `flag` if it was given: it does not apply (`why`)."""
    if given(args, flag):
        raise UsageError(f"argument {flag}: {why}")


def check_device_setting(*, runs_kernels: bool) -> None:
    """Refuse a ``PAGED_KV_DEVICE`` other than ``gpu`` or ``sim``, and, for a command that
    runs kernels, ``gpu`` on a machine whose CUDA driver reports no GPU. Loads no numba."""
    from paged_kv.gpu import device  # noqa: PLC0415 - the package imports this module

    raw = os.environ.get(device.ENV_OVERRIDE, "")
    value = raw.strip().lower()
    if value and value not in ("gpu", "sim"):
        raise UsageError(
            f"{device.ENV_OVERRIDE} must be 'gpu' or 'sim' (or unset: the driver decides), "
            f"got {raw!r}"
        )
    if runs_kernels and value == "gpu" and not device.gpu_present():
        raise UsageError(
            f"{device.ENV_OVERRIDE}=gpu, but the CUDA driver reports no GPU on this machine: "
            f"unset it, or set {device.ENV_OVERRIDE}=sim for Numba's CUDA simulator"
        )


#: estimated seconds above which a run on the CUDA simulator needs ``--allow-slow``
SLOW_SIMULATOR_S = 60.0
#: estimated seconds above which a run says up front how long it will take
ANNOUNCE_S = 5.0


def add_allow_slow(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-slow``: run even when the CUDA simulator would take minutes."""
    parser.add_argument(
        "--allow-slow", action="store_true",
        help=f"run even if the CUDA simulator would take over {SLOW_SIMULATOR_S:.0f} s "
             f"(the estimate is printed first)",
    )


def check_simulator_time(args: argparse.Namespace, seconds: float, flag: str,
                         what: str) -> None:
    """Before kernels run: refuse `what` (naming `flag`, the option that sizes it) when
    the CUDA simulator would take more than `SLOW_SIMULATOR_S` (`seconds` is the
    estimate) unless ``--allow-slow``; announce any estimate over `ANNOUNCE_S` on stderr.
    On a real GPU nothing is refused or announced."""
    from paged_kv.core.humanize import format_seconds  # noqa: PLC0415
    from paged_kv.gpu.device import device_kind  # noqa: PLC0415 - decides the device, no numba

    if device_kind() != "sim" or seconds <= ANNOUNCE_S:
        return
    if seconds > SLOW_SIMULATOR_S and not getattr(args, "allow_slow", False):
        raise UsageError(
            f"argument {flag}: {what} would take about {format_seconds(seconds)} in the CUDA "
            f"simulator (no GPU here); pass --allow-slow to run it anyway"
        )
    sys.stderr.write(f"{what}: about {format_seconds(seconds)} in the CUDA simulator\n")
