"""The images: `bentoml build` of the service's two Bentos (CPU, GPU), and the adapter's Dockerfile against
what the Makefile installs. Containerising needs Docker, which is not here (docs/deployment.md, "Images")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.manifests import pod_specs

DOCKERFILE = ROOT / "images" / "adapter" / "Dockerfile"


def requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def build(bentofile: str, home: Path) -> Path:
    """Build the Bento into a BentoML home of its own and return its folder."""
    # The rest of the environment stays: BentoML locks the Bento's packages against the package index,
    # through whatever index and certificates this machine is set up with.
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    done = subprocess.run([bentoml, "build", "-f", bentofile], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    name = yaml.safe_load((ROOT / bentofile).read_text())["name"]
    (folder,) = [p for p in (home / "bentos" / name).iterdir() if p.is_dir() and p.name != "latest"]
    return folder


@pytest.mark.parametrize("bentofile, runtime, not_runtime, base", [
    ("bentofile.yaml", "onnxruntime", "onnxruntime-gpu", "python:3.11-slim"),
    ("bentofile-gpu.yaml", "onnxruntime-gpu", "onnxruntime", "nvidia/cuda:"),
])
def test_the_service_bento_holds_code_only_and_its_runtime(bentofile: str, runtime: str, not_runtime: str,
                                                           base: str, tmp_path: Path) -> None:
    bento = build(bentofile, tmp_path)
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "service.service:Tuneloop" and manifest["models"] == []
    files = [p.relative_to(bento / "src") for p in (bento / "src").rglob("*") if p.is_file()]
    assert {f.parts[0] for f in files if f.suffix in (".py", ".proto")} == {"service", "tuneloop"}
    assert [f for f in files if f.suffix not in (".py", ".proto") and f.name != "bentofile.yaml"] == []
    requirements = requirement_names((bento / "env" / "python" / "requirements.txt").read_text())
    assert runtime in requirements and not_runtime not in requirements
    assert not requirements & {"torch", "evidently", "peft", "accelerate"}  # serving needs none of training's
    assert "s3fs" in requirements  # a registry on object storage
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(base)}", dockerfile, re.MULTILINE)


def test_the_adapter_image_installs_what_the_makefile_installs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dockerfile = DOCKERFILE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"install --quiet (torch==\S+)", makefile).group(1)
    assert re.search(rf"pip install [^\n]*{re.escape(torch_pin)}\n", dockerfile)
    assert dockerfile.index(torch_pin) < dockerfile.index("-c constraints.txt")  # torch first, as there
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[([^\]]*)\]', pyproject.split("[tool.setuptools.packages.find]")[1]).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.MULTILINE), package
    # The image's user is the one the pods run as.
    uid = int(re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE).group(1))
    for objects in rendered.values():
        for _, pod in pod_specs(objects):
            assert pod["securityContext"]["runAsUser"] == uid
