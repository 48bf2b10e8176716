"""Re-run notebooks at full size, in place, so they carry the outputs of that run.

``make notebooks`` (every notebook) or ``make notebooks NOTEBOOKS="04_block_map"``;
directly: ``python scripts/run_notebooks.py [NAME ...]`` (names with or without
``.ipynb``). Each notebook runs with ``PAGED_KV_NOTEBOOK_SIZE=full`` from the
``notebooks/`` folder, so it writes its committed figures into ``figures/``; the executed
notebook replaces the file (no execution timestamps, so a rerun that changes nothing
leaves the file unchanged). A failing cell stops the run with the notebook untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run(path: Path, timeout: int) -> float:
    """Execute the notebook at `path` in place; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    names = [n.removesuffix(".ipynb") for n in args.names]
    paths = ([NOTEBOOKS / f"{n}.ipynb" for n in names] if names
             else sorted(NOTEBOOKS.glob("*.ipynb")))
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook in {NOTEBOOKS}: {', '.join(missing)}")
    os.environ["PAGED_KV_NOTEBOOK_SIZE"] = "full"  # the kernel inherits the environment
    for path in paths:
        print(f"running {path.name} at full size ...", flush=True)
        print(f"  done in {run(path, args.timeout):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
