"""Checks that run after parsing and before any work: options typed or not, the device
setting, the CUDA simulator's time estimate, a run's memory estimate against the memory
this machine has available, and whether a server answers at an address."""

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


def available_memory() -> int:
    """Bytes this process can still take: the kernel's ``MemAvailable``, capped by the
    cgroup's memory limit less its usage where one is set (a container's), or the free
    physical pages where ``/proc/meminfo`` is missing."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # no such sysconf name here
            return 2**63 - 1  # nothing to go by: refuse nothing
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2, v1
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            with open(f"/sys/fs/cgroup/{limit_file}") as limit, \
                    open(f"/sys/fs/cgroup/{usage_file}") as usage:
                left = int(limit.read().strip()) - int(usage.read().strip())
        except (OSError, ValueError):  # no such cgroup file, or "max": no limit
            continue
        available = min(available, max(0, left))
        break
    return available


def add_allow_large(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-large``: run even when the run's estimated memory exceeds what this
    machine has available (`check_memory`)."""
    parser.add_argument(
        "--allow-large", action="store_true",
        help="run even if the estimated memory exceeds what this machine has available "
             "(the estimate is printed when refused)",
    )


def check_memory(args: argparse.Namespace, nbytes: int, flag: str, what: str) -> None:
    """Before any work: refuse `what` (naming `flag`, the option that sizes it) when its
    estimated memory `nbytes` exceeds `available_memory`, unless ``--allow-large``."""
    from paged_kv.core.humanize import format_bytes  # noqa: PLC0415

    if getattr(args, "allow_large", False):
        return
    available = available_memory()
    if nbytes > available:
        raise UsageError(
            f"argument {flag}: {what} would take about {format_bytes(nbytes)} of memory, "
            f"more than the {format_bytes(available)} available here; pass --allow-large "
            f"to run it anyway"
        )


#: seconds `check_reachable` waits for a server to accept a connection
CONNECT_TIMEOUT_S = 5.0


def check_reachable(flag: str, address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse `address` (``[scheme://]host:port``, given with `flag`) unless something
    accepts a TCP connection there within `timeout_s` seconds. Schemes that are not
    TCP (``inproc://``, ``ucx://``) are not checked."""
    import socket  # noqa: PLC0415

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal: [::1]:8786
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (
            err.strerror or type(err).__name__).lower()
        raise UsageError(f"argument {flag}: nothing answers at {address} ({why}; waited up "
                         f"to {timeout_s:g} s)") from None
