"""The lock files (scripts/lock, pip-compile --generate-hashes) cover every range in pyproject.toml,
pin each package once with its hashes, and are what scripts/test, scripts/run and the image install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """package -> (version, hashes) for each `pkg==version \\ --hash=...` entry of a lock file."""
    text = (ROOT / name).read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = PIN.match(entry.strip())
        if not m:
            continue
        pkg = canonicalize_name(m.group(1))
        assert pkg not in pins, f"{name} pins {pkg} twice"
        pins[pkg] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _check_covers(lock: str, ranges: list[str]) -> None:
    pins = _pins(lock)
    assert pins, f"{lock} pins nothing"
    for spec in ranges:
        req = Requirement(spec)
        pkg = canonicalize_name(req.name)
        assert pkg in pins, f"{lock} does not pin {req.name} ({spec}): run scripts/lock"
        version, _ = pins[pkg]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, outside pyproject.toml's {spec}: run scripts/lock"
        )
    for pkg, (version, hashes) in pins.items():
        assert hashes, f"{lock}: {pkg}=={version} has no --hash (pip install --require-hashes refuses it)"


def test_requirements_txt_pins_every_runtime_range_with_hashes():
    _check_covers("requirements.txt", _project()["dependencies"])


def test_requirements_dev_txt_pins_runtime_and_dev_ranges_with_hashes_and_the_same_runtime_versions():
    project = _project()
    _check_covers("requirements-dev.txt", project["dependencies"] + project["optional-dependencies"]["dev"])
    runtime, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    differ = {p: (v, dev[p][0]) for p, (v, _) in runtime.items() if p in dev and dev[p][0] != v}
    assert not differ, f"the two lock files pin different versions: {differ}: run scripts/lock"


def test_every_installer_uses_the_lock_with_hashes():
    for script, lock in (("scripts/test", "requirements-dev.txt"), ("scripts/run", "requirements.txt")):
        text = (ROOT / script).read_text()
        assert "--require-hashes" in text and lock in text and "--no-deps -e" in text, script
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.txt" in dockerfile and "--no-deps ." in dockerfile
    assert "!requirements.txt" in (ROOT / ".dockerignore").read_text()
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec scripts/test")
    assert "scripts/lock" in (ROOT / "README.md").read_text()
