"""``tuneloop serve``: run the BentoML service (HTTP + gRPC) on the registry's production model."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Annotated, Optional

import typer


def serve(
    port: Annotated[int, typer.Option(help="HTTP port (/classify, Open Inference Protocol REST, /metrics).")] = 3000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (Open Inference Protocol v2); 0 turns it off.")] = 8001,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
    version: Annotated[Optional[str], typer.Option(help="Serve this version instead of following production.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (gRPC shares its port via SO_REUSEPORT).")] = 1,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="YAML settings file.")] = None,
) -> None:
    """Serve the production model (or --version) over HTTP and gRPC, hot-swapping on promotion."""
    env = dict(os.environ)
    env.update({
        "TUNELOOP_SERVING__PORT": str(port), "TUNELOOP_SERVING__GRPC_PORT": str(grpc_port),
        "TUNELOOP_SERVING__HOST": host, "TUNELOOP_SERVING__WORKERS": str(workers),
        "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
    })
    if version:
        env["TUNELOOP_SERVING__VERSION"] = version
    if registry:
        env["TUNELOOP_REGISTRY"] = registry
    if config:
        env["TUNELOOP_CONFIG"] = config
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or "bentoml"
    # exec: signals (SIGTERM from Kubernetes, Ctrl-C) reach BentoML directly, which drains gracefully.
    os.execvpe(bentoml, [bentoml, "serve", "service.service:Tuneloop", "--host", host, "--port", str(port)], env)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
