"""The lock files: the whole dependency tree, hashed, made from the pinned inputs.

requirements.txt and requirements-dev.txt are edited by hand; ``make lock``
compiles them into requirements.lock (the image) and requirements-dev.lock
(``make install``, CI). These tests keep the two in step and check that the
virtualenv running them is the locked one.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PIP_LOCK = ROOT / "requirements-pip.lock"
LOCKS = [RUNTIME_LOCK, DEV_LOCK]
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def entries(lock: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """name -> (requirement with its marker, hashes) for every entry of a lock."""
    text = re.sub(r"\s*#.*$", "", lock.read_text(encoding="utf-8"), flags=re.M)
    found: dict[str, tuple[Requirement, list[str]]] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        if entry.strip():
            spec, *hashes = entry.split(" --hash=")
            requirement = Requirement(spec.strip())
            found[canonicalize_name(requirement.name)] = (
                requirement,
                [f"--hash={h.strip()}" for h in hashes],
            )
    return found


def pins(requirements: Path) -> dict[str, str]:
    """name -> pinned version of a hand-edited requirements file (no includes)."""
    found = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            found[canonicalize_name(requirement.name)] = spec.version
    return found


def version(requirement: Requirement) -> str:
    """The one version an ``==`` entry of a lock names."""
    (spec,) = requirement.specifier
    assert spec.operator == "==", str(requirement)
    return spec.version


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_entry_is_one_version_with_hashes(lock: Path):
    found = entries(lock)
    assert len(found) > 100, "a lock of the whole tree has far more than the pins"
    for name, (requirement, hashes) in found.items():
        version(requirement)
        assert hashes and all(HASH.fullmatch(h) for h in hashes), name


@pytest.mark.parametrize(
    ("lock", "inputs"),
    [
        (RUNTIME_LOCK, ["requirements.txt"]),
        (DEV_LOCK, ["requirements.txt", "requirements-dev.txt"]),
    ],
    ids=["runtime", "dev"],
)
def test_the_lock_keeps_every_pin_of_its_inputs(lock: Path, inputs: list[str]):
    found = entries(lock)
    for requirements in inputs:
        for name, pinned in pins(ROOT / requirements).items():
            assert name in found, f"{name} ({requirements}) is not in {lock.name}"
            assert version(found[name][0]) == pinned, f"{name}: run `make lock`"


def test_the_dev_lock_holds_the_runtime_lock_unchanged():
    runtime, dev = entries(RUNTIME_LOCK), entries(DEV_LOCK)
    changed = {
        name: (str(entry[0]), str(dev.get(name, (None,))[0]))
        for name, entry in runtime.items()
        if name not in dev or str(dev[name][0]) != str(entry[0])
    }
    assert not changed
    assert all(set(runtime[n][1]) == set(dev[n][1]) for n in runtime)
    assert set(dev) > set(runtime)


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_one_lock_serves_python_3_11_and_3_12(python: str):
    """Entries that differ by platform or Python carry markers (uv --universal);
    on Linux with either Python, no pinned requirement is left out."""
    linux = {
        "python_version": python,
        "python_full_version": f"{python}.9",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    applies = {
        name
        for name, (requirement, _) in entries(DEV_LOCK).items()
        if requirement.marker is None or requirement.marker.evaluate(linux)
    }
    wanted = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    assert set(wanted) <= applies
    assert len(applies) > 0.95 * len(entries(DEV_LOCK))


def test_the_virtualenv_running_the_tests_is_the_locked_one():
    locked = {
        name: version(requirement)
        for name, (requirement, _) in entries(DEV_LOCK).items()
        if requirement.marker is None or requirement.marker.evaluate()
    }
    installed = {}
    for name in locked:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
    assert installed == locked, "run `make install`"


def test_the_header_says_how_to_regenerate_it():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--generate-hashes" in makefile and "--universal" in makefile
    for lock in [*LOCKS, PIP_LOCK]:
        head = lock.read_text(encoding="utf-8").splitlines()[:2]
        assert head == [
            "# This file was autogenerated by uv via the following command:",
            "#    make lock",
        ], lock.name


def test_the_installer_lock_pins_pip_with_hashes_and_it_is_the_one_running():
    """A fresh venv's pip (23.2) refuses hashed extras such as httpx[http2] once
    a newer release is published: every install upgrades pip from its lock."""
    found = entries(PIP_LOCK)
    assert set(found) == {"pip"}
    requirement, hashes = found["pip"]
    assert version(requirement) == pins(ROOT / "requirements-pip.txt")["pip"]
    assert hashes and all(HASH.fullmatch(h) for h in hashes)
    assert metadata.version("pip") == version(requirement), "run `make install`"
