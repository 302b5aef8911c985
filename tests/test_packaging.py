"""Our import names belong to us alone.

    python -m pytest tests/test_packaging.py

A top-level package named like another installed distribution's shadows it for whoever imports that name next:
transformers 5.25 began to depend on Hugging Face's `kernels` and probes it with `import kernels`, which found our
old top-level `kernels/` first and broke every model load (CI, 2026-12-03). The kernels now live in grpo/kernels/;
this test catches the next such clash (a new dependency that installs `data` or `rewards`) before a user does.
"""
import importlib.metadata
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = "grpo-rubric"


def _our_top_level_packages() -> list[str]:
    setup = (ROOT / "setup.py").read_text()
    listed = re.search(r"packages=\[([^\]]*)\]", setup).group(1)
    names = {name.strip().strip("\"'").split(".")[0] for name in listed.split(",") if name.strip()}
    return sorted(names)


def test_setup_lists_every_package_in_the_tree():
    setup = (ROOT / "setup.py").read_text()
    listed = set(re.findall(r"\"([\w.]+)\"", re.search(r"packages=\[([^\]]*)\]", setup).group(1)))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/__init__.py")}
    on_disk |= {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/*/__init__.py")}
    on_disk = {name for name in on_disk if name.split(".")[0] in listed}  # tests/, bench/ are not packages we ship
    assert on_disk == listed


def test_no_top_level_package_shadows_another_installed_distribution():
    owners = importlib.metadata.packages_distributions()
    clashes = {}
    for name in _our_top_level_packages():
        others = {d for d in owners.get(name, []) if d.replace("_", "-").lower() != OURS}
        try:
            if importlib.metadata.distribution(name).metadata["Name"].replace("_", "-").lower() != OURS:
                others.add(name)
        except importlib.metadata.PackageNotFoundError:
            pass
        if others:
            clashes[name] = sorted(others)
    assert not clashes, f"installed distributions share our import names: {clashes}"


def test_each_package_imports_from_this_tree():
    for name in _our_top_level_packages():
        origin = Path(importlib.util.find_spec(name).origin).resolve()
        assert origin.is_relative_to(ROOT), f"`import {name}` finds {origin}, not this repository"


def test_shipped_code_never_imports_the_test_fixtures():
    """Test fixtures (tests/loopback.py, tests/vllm_server.py) are not installed: a shipped module importing them
    would work from a clone and fail on an installed copy."""
    offenders = [str(p.relative_to(ROOT)) for name in _our_top_level_packages() for p in (ROOT / name).rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+tests\b", p.read_text(encoding="utf-8"), re.M)]
    assert offenders == []
    assert not (ROOT / "rewards" / "testing_server.py").exists()  # moved to tests/loopback.py
