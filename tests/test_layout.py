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


def test_every_command_the_readme_names_is_installed_on_the_tuneloop_script() -> None:
    """Each deployable mounts its commands through an entry point; the installed script must carry them all."""
    import re

    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"^```bash\n(.*?)^```", readme, re.M | re.S))
    named = set(re.findall(r"`tuneloop ([a-z][a-z-]+)", readme)) | set(re.findall(r"^tuneloop ([a-z][a-z-]+)", code, re.M))
    script = ROOT / ".venv" / "bin" / "tuneloop"
    done = subprocess.run([str(script) if script.exists() else "tuneloop", "--help"], capture_output=True,
                          text=True, timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    installed = set(re.findall(r"^│ ([a-z][a-z-]+)\s", done.stdout, re.M))
    assert {"train", "serve", "monitor", "broker", "adapt", "models"} <= named
    assert named <= installed, named - installed
