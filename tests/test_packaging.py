"""pyproject.toml and constraints.txt: lower bounds that CI's pinned versions satisfy, a pin for
every requirement, and the package data the wheel must carry."""

import pathlib
import subprocess
import tomllib

import pytest
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


def tracked_files():
    """The files git tracks, or None outside a git checkout (an unpacked sdist)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_git_tracks_no_large_files_outside_test_data():
    """Source only in git: no tracked file outside tests/data/ exceeds 1 MB (a tfds data folder
    and a wheel once slipped in with a refactor), and no wheel or array_record shard at all."""
    files = tracked_files()
    if files is None:
        pytest.skip("not a git checkout")
    test_data = ROOT / "tests" / "data"
    large = [f"{p.relative_to(ROOT)} ({p.stat().st_size / 2**20:.1f} MB)" for p in files
             if p.is_file() and test_data not in p.parents and p.stat().st_size > 2**20]
    assert not large, f"large files tracked by git (extend .gitignore): {large}"
    artefacts = [p.relative_to(ROOT) for p in files
                 if p.suffix == ".whl" or ".array_record-" in p.name]
    assert not artefacts, f"build or data artefacts tracked by git: {artefacts}"
