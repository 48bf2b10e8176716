"""Packaging: environment.yml and pyproject.toml list the same dependencies."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the dev extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: conda-forge names that differ from the distribution's name on PyPI
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string, extras kept."""
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", requirement)
    assert match, requirement
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name + (match.group(2) or "")


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.update(extra)
    return {_name(r) for r in reqs}


def _environment_requirements() -> set[str]:
    names: set[str] = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"\s*-\s+([^#\s][^#]*)", line)
        if not item:
            continue
        entry = item.group(1).strip()
        if entry in ("pip", "pip:", "-e .") or entry.startswith(("python", "-e")):
            continue
        name = _name(entry)
        names.add(CONDA_TO_PYPI.get(name, name))
    return names


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_version_pins_agree():
    """Same lower bounds in both files, so the two environments cannot drift apart."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    env_text = (ROOT / "environment.yml").read_text()
    for req in reqs:
        spec = req.split(";")[0].replace(" ", "")  # environment markers are pip's business
        assert spec in env_text.replace(" ", ""), f"{req} not pinned alike in environment.yml"


def test_the_hf_extra_pins_torch_exactly_in_both_files():
    """One torch build (a CPU wheel on the test machines): any other spec downloads
    gigabytes, so the pin is exact, and conda-forge's ``pytorch`` carries the same one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    hf = project["optional-dependencies"]["hf"]
    assert "torch==2.13.0" in hf
    env_text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s+pytorch==2\.13\.0\s", env_text, re.M)
    assert "hf]" in (ROOT / "Makefile").read_text()  # make test installs and tests it


def test_the_oldest_transformers_is_one_number_everywhere():
    """transformers 5.24 is the first whose ``generate`` takes ``cache=`` and whose layers
    hand their keyword arguments to ``Cache.update`` (the paged attention reads the cache
    there): the extra, the conda file, and every hf test module's skip say the same."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "transformers>=5.24,<6" in project["optional-dependencies"]["hf"]
    assert re.search(r"^\s*-\s+transformers>=5\.24,<6\s", (ROOT / "environment.yml")
                     .read_text(), re.M)
    from paged_kv.cli._hf_generate import TRANSFORMERS_MIN  # generate --hf's refusal

    assert TRANSFORMERS_MIN == (5, 24)
    for module in sorted((ROOT / "tests").glob("test_hf_*.py")):
        assert 'pytest.importorskip("transformers", minversion="5.24")' in \
            module.read_text(), module.name


def test_license_is_an_spdx_expression_with_its_file():
    """The SPDX form (setuptools >= 77): no deprecation warning at install."""
    document = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = document["project"]
    assert project["license"] == "Apache-2.0"
    assert all((ROOT / f).is_file() for f in project["license-files"])
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert any(r.replace(" ", "").startswith("setuptools>=77")
               for r in document["build-system"]["requires"])
    assert "license: Apache-2.0" in (ROOT / "CITATION.cff").read_text()


def test_the_oldest_pins_are_pyprojects_lower_bounds():
    """`.ci/check_oldest.sh` (a CI step) compiles the kernels with exactly the oldest numba
    and numba-cuda that pyproject.toml admits, so the stated minimum is a checked one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lower = {}
    for req in project["dependencies"]:
        match = re.fullmatch(r"([a-z-]+)>=([0-9.]+)", req.replace(" ", ""))
        if match:
            lower[match.group(1)] = match.group(2)
    pins = {}
    for line in (ROOT / ".ci" / "oldest-requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"([a-z-]+)(\[[a-z0-9,]+\])?==([0-9.]+)", line.strip())
        if match:
            pins[match.group(1)] = match.group(3)
    assert set(pins) == {"numba", "numba-cuda"}
    for name, version in pins.items():
        assert version.split(".")[:2] == lower[name].split(".")[:2], (name, version, lower[name])
