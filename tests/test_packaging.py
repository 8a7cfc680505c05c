"""setup.py pins what the tests run against: every installed requirement satisfies its pin."""
from __future__ import annotations

import ast
import os
from importlib import metadata

from packaging.requirements import Requirement

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def _requirements() -> list[Requirement]:
    call = next(node for node in ast.walk(ast.parse(open(SETUP, encoding="utf-8").read()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires",
                                                                                   "extras_require")}
    return [Requirement(r) for r in keywords["install_requires"] + keywords["extras_require"]["test"]]


def test_installed_versions_satisfy_the_pins():
    requirements = _requirements()
    pinned = {r.name for r in requirements if r.specifier}
    assert {"jax", "flax", "orbax-checkpoint", "transformers", "torch"} <= pinned
    for requirement in requirements:
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (str(requirement), installed)
    torch = next(r for r in requirements if r.name == "torch")
    assert str(torch.specifier) == "==2.13.0"
