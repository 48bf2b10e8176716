"""The documentation: every public module is in the API reference, every name a package
exports is on the public API page, and the guides' code runs as written. (``make docs``
builds the site with warnings as errors; CI runs it.)"""

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
PUBLIC_PAGE = DOCS / "api" / "public.rst"


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


def _on_the_public_page() -> tuple[set[str], set[str]]:
    """(names documented one by one, modules documented whole) on the public API page."""
    text = PUBLIC_PAGE.read_text()
    names = set(re.findall(r"^\.\. auto(?:class|function|data|exception):: (\S+)", text, re.M))
    whole = set()
    for module, options in re.findall(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", text, re.M):
        listed = re.search(r":members: (.*)", options)
        if listed:
            names |= {f"{module}.{n.strip()}" for n in listed.group(1).split(",")}
        elif ":no-members:" not in options:
            whole.add(module)
    return names, whole


def test_every_name_a_package_exports_is_on_the_public_page():
    names, whole = _on_the_public_page()
    packages = ["paged_kv"] + [m for m in _modules() if _public(m)
                               and hasattr(importlib.import_module(m), "__path__")]
    missing = []
    for name in packages:
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", ()):
            obj = getattr(module, export)
            homes = [m for m in [name, *_modules()]
                     if getattr(importlib.import_module(m), export, None) is obj]
            if not any(f"{home}.{export}" in names or home in whole for home in homes):
                missing.append(f"{name}.{export}")
    assert not missing, f"add these to docs/api/public.rst where they are defined: {missing}"


def test_the_public_page_documents_nothing_twice():
    names, whole = _on_the_public_page()
    assert not {n for n in names if n.rpartition(".")[0] in whole}
    for page in (DOCS / "api").glob("*.rst"):
        if page != PUBLIC_PAGE:
            text = page.read_text()
            for module in whole:
                assert f".. automodule:: {module}\n" not in text, f"{module}: {page.name}"


def _code_blocks(page: Path) -> list[str]:
    if page.suffix == ".md":  # MyST: ```python fences
        return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)",
                        page.read_text(), re.M)
    return [textwrap.dedent(block) for block in blocks]


GUIDES = sorted([*(DOCS / "howto").glob("*.rst"), *(DOCS / "guide").glob("*.md"),
                 *(DOCS / "guide").glob("*.rst")])


@pytest.mark.parametrize("page", [p for p in GUIDES if _code_blocks(p) or p.suffix == ".rst"],
                         ids=lambda p: p.stem)
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
