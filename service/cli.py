"""``tuneloop serve``: run the BentoML service (HTTP + gRPC) on the registry's production model.

An option not given leaves its setting to the environment, the YAML file (``--config``) and the defaults.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Optional

import typer

# The variable that carries each option to the service, which reads its settings from its environment.
OPTION_ENV = {
    "port": "TUNELOOP_SERVING__PORT",
    "grpc_port": "TUNELOOP_SERVING__GRPC_PORT",
    "host": "TUNELOOP_SERVING__HOST",
    "version": "TUNELOOP_SERVING__VERSION",
    "workers": "TUNELOOP_SERVING__WORKERS",
}


def bentoml_command(
    bentoml: str,
    given: Mapping[str, Any],
    config: str | None = None,
    registry: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of the BentoML process; ``given`` holds only the serving options given.

    Raises ValueError (a pydantic ValidationError among them) or FileNotFoundError on bad settings.
    """
    from tuneloop.cli import settings_from_options
    from tuneloop.settings import ServingSettings

    # Resolved here as the service will resolve them, for the host and port BentoML binds.
    serving = settings_from_options(config, registry).serving
    serving = ServingSettings.model_validate(serving.model_dump() | dict(given))
    env = dict(os.environ)
    env.update({OPTION_ENV[name]: str(value) for name, value in given.items()})
    env.update({"BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"})
    if registry:
        env["TUNELOOP_REGISTRY"] = registry
    if config:
        env["TUNELOOP_CONFIG"] = config
    argv = [bentoml, "serve", "service.service:Tuneloop", "--host", serving.host, "--port", str(serving.port)]
    return argv, env


def serve(
    port: Annotated[
        Optional[int], typer.Option(help="HTTP port (/classify, Open Inference Protocol REST, /metrics).")
    ] = None,
    grpc_port: Annotated[
        Optional[int], typer.Option(help="gRPC port (Open Inference Protocol v2); 0 turns it off.")
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind.")] = None,
    version: Annotated[Optional[str], typer.Option(help="Serve this version instead of following production.")] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="Worker processes (gRPC shares its port via SO_REUSEPORT).")
    ] = None,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="YAML settings file (also TUNELOOP_CONFIG).")] = None,
) -> None:
    """Serve the production model (or --version) over HTTP and gRPC, hot-swapping on promotion."""
    from tuneloop.cli import fail

    options = {"port": port, "grpc_port": grpc_port, "host": host, "version": version, "workers": workers}
    given = {name: value for name, value in options.items() if value is not None}
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or "bentoml"
    try:
        argv, env = bentoml_command(bentoml, given, config, registry)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    # exec: signals (SIGTERM from Kubernetes, Ctrl-C) reach BentoML directly, which drains gracefully.
    os.execvpe(bentoml, argv, env)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
