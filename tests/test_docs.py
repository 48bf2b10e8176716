"""The documentation: every public module and name is in the API reference, and the
how-to guides' code runs as written. (``make docs`` builds the site with warnings as
errors; CI runs it.)"""

import importlib
import pkgutil
import re
import textwrap
from pathlib import Path

import matplotlib
import pytest

import paged_kv
import paged_kv.cli

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCUMENTED = {m for page in DOCS.rglob("*.rst")
              for m in re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), re.M)}


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(paged_kv.__path__, "paged_kv.")
            if not m.name.endswith("__main__")]


def _public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def test_every_public_module_has_a_reference_entry():
    subcommands = {m.__name__ for m in paged_kv.cli.commands()}  # the CLI page shows them
    wanted = {m for m in _modules() if _public(m) and m not in subcommands
              and m != "paged_kv.data"}
    missing = sorted(wanted - DOCUMENTED)
    assert not missing, f"add one line '.. automodule:: NAME' to a page in docs/api/: {missing}"
    unknown = sorted(DOCUMENTED - set(_modules()) - {"paged_kv"})
    assert not unknown, f"docs name modules that do not exist: {unknown}"


def test_every_name_a_package_exports_is_documented_where_it_is_defined():
    for name in ["paged_kv", *_modules()]:
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", ()):
            obj = getattr(module, export)
            home = getattr(obj, "__module__", None)
            if home is None or not home.startswith("paged_kv"):  # a constant: find its home
                home = next((m for m in DOCUMENTED if m != name
                             and getattr(importlib.import_module(m), export, None) is obj),
                            name)
            assert home in DOCUMENTED, f"{name}.{export} is defined in {home}, not in the docs"


def _code_blocks(page: Path) -> list[str]:
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)",
                        page.read_text(), re.M)
    return [textwrap.dedent(block) for block in blocks]


@pytest.mark.parametrize("page", sorted((DOCS / "howto").glob("*.rst")), ids=lambda p: p.stem)
def test_the_how_to_code_runs(page, monkeypatch, request):
    import paged_kv.core.eviction

    if page.stem == "huggingface":  # torch on one thread, offline; kernels' barriers fast
        request.getfixturevalue("hf_env")
        request.getfixturevalue("fast_simulator_barriers")

    # a guide may register a policy: on a copy, so no other test sees it
    monkeypatch.setattr(paged_kv.core.eviction, "POLICIES", dict(paged_kv.core.eviction.POLICIES))
    blocks = _code_blocks(page)
    assert blocks, f"{page.name} has no code"
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
