"""pyproject.toml and constraints.txt: lower bounds that CI's pinned versions satisfy, a pin for
every requirement, and the package data the wheel must carry."""

import pathlib
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def project():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pins():
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pinned}


def test_constraints_pin_every_requirement_within_its_range():
    """Every dependency and extra (all but [tf] and [gcs], which CI never installs) is pinned,
    inside pyproject's range; the ranges have lower bounds."""
    meta, pinned = project()["project"], pins()
    extras = {k: v for k, v in meta["optional-dependencies"].items() if k not in ("tf", "gcs")}
    requirements = [Requirement(r) for r in meta["dependencies"] + sum(extras.values(), [])]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name]), (str(req), pinned[name])
        assert any(s.operator in (">=", "==") for s in req.specifier), f"no lower bound: {req}"
    assert "ddpm-jax" not in pinned


def test_pyproject_ships_the_package_data():
    """Every non-Python file in ddpm_jax/ matches pyproject's package-data, so the wheel carries
    the HTML page (an editable install would find it either way)."""
    patterns = project()["tool"]["setuptools"]["package-data"]["ddpm_jax"]
    package = ROOT / "ddpm_jax"
    data = [p.relative_to(package) for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert pathlib.PurePath("reverse_process.html") in data
    for path in data:
        assert any(path.match(pattern) for pattern in patterns), path
