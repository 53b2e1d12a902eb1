"""The shape the README promises: the shared contracts import none of the deployables."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import tuneloop
from tests.conftest import ROOT


def test_the_contracts_package_imports_no_deployable() -> None:
    modules = [m.name for m in pkgutil.walk_packages(tuneloop.__path__, "tuneloop.")]
    probe = ("import importlib, sys\n"
             f"for name in {modules!r}:\n"
             "    importlib.import_module(name)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'service', 'adapter', 'monitoring'}))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
