"""Settings precedence: overrides (the command line) > environment > YAML file > defaults, whatever the values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.settings import MonitorSettings, get_settings, load_settings

DEFAULT_PORT = 3000


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A TUNELOOP_* variable of the shell running the tests would be one more source.
    for name in list(os.environ):
        if name.startswith("TUNELOOP_"):
            monkeypatch.delenv(name)


def write_yaml(folder: Path, data: Any) -> Path:
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# (override, environment, YAML, expected) for serving.port; None: that source says nothing.
# Values equal to the default (3000) must count as given as much as any other.
PORT_CASES = {
    "override beats env": (DEFAULT_PORT, "3001", None, DEFAULT_PORT),
    "override beats env equal to default": (3001, str(DEFAULT_PORT), None, 3001),
    "override beats yaml": (DEFAULT_PORT, None, 4000, DEFAULT_PORT),
    "override beats yaml equal to default": (4000, None, DEFAULT_PORT, 4000),
    "override beats default": (4000, None, None, 4000),
    "override equal to default": (DEFAULT_PORT, None, None, DEFAULT_PORT),
    "override equal to default beats env and yaml": (DEFAULT_PORT, "3001", 4000, DEFAULT_PORT),
    "env beats yaml": (None, str(DEFAULT_PORT), 4000, DEFAULT_PORT),
    "env beats yaml equal to default": (None, "4000", DEFAULT_PORT, 4000),
    "env beats default": (None, "4000", None, 4000),
    "env equal to default": (None, str(DEFAULT_PORT), None, DEFAULT_PORT),
    "yaml beats default": (None, None, 4000, 4000),
    "yaml equal to default": (None, None, DEFAULT_PORT, DEFAULT_PORT),
    "default": (None, None, None, DEFAULT_PORT),
}


@pytest.mark.parametrize(("override", "env", "in_file", "expected"), PORT_CASES.values(), ids=PORT_CASES.keys())
def test_each_source_beats_the_ones_below_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, override: int | None, env: str | None,
    in_file: int | None, expected: int,
) -> None:
    if env is not None:
        monkeypatch.setenv("TUNELOOP_SERVING__PORT", env)
    config = write_yaml(tmp_path, {"serving": {"port": in_file}}) if in_file is not None else None
    overrides = {"serving": {"port": override}} if override is not None else {}
    assert load_settings(config, **overrides).serving.port == expected


def test_top_level_env_equal_to_default_beats_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_REGISTRY", "registry")
    assert load_settings(write_yaml(tmp_path, {"registry": "s3://bucket/models"})).registry == "registry"
    assert load_settings(write_yaml(tmp_path, {"registry": "s3://bucket/models"}), registry="other").registry == "other"


def test_tuneloop_config_names_the_file_and_config_file_wins_over_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    named_by_env = write_yaml(tmp_path / "a", {"serving": {"port": 4000}})
    named_by_argument = write_yaml(tmp_path / "b", {"serving": {"port": 5000}})
    monkeypatch.setenv("TUNELOOP_CONFIG", str(named_by_env))
    assert load_settings().serving.port == 4000
    assert load_settings(named_by_argument).serving.port == 5000
    monkeypatch.setenv("TUNELOOP_SERVING__PORT", str(DEFAULT_PORT))
    assert load_settings().serving.port == DEFAULT_PORT


def test_nested_sections_merge_key_by_key_across_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_yaml(tmp_path, {
        "serving": {"port": 4000, "workers": 2},
        "kafka": {"bootstrap_servers": "broker:9093", "partitions": 6},
    })
    monkeypatch.setenv("TUNELOOP_SERVING__HOST", "1.2.3.4")
    monkeypatch.setenv("TUNELOOP_SERVING__WORKERS", "3")
    settings = load_settings(config, serving={"max_texts": 8}, kafka={"partitions": 1})
    serving, kafka = settings.serving, settings.kafka
    assert (serving.port, serving.workers, serving.host, serving.max_texts) == (4000, 3, "1.2.3.4", 8)
    assert (kafka.bootstrap_servers, kafka.partitions) == ("broker:9093", 1)
    assert serving.grpc_port == 8001  # said by no source: the default


def test_short_aliases_beat_their_long_forms_and_the_file_but_not_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_yaml(tmp_path, {"kafka": {"spool_dir": "/from/yaml", "bootstrap_servers": "yaml:9092"}})
    monkeypatch.setenv("TUNELOOP_KAFKA__SPOOL_DIR", "/long")
    monkeypatch.setenv("TUNELOOP_SPOOL_DIR", "/short")
    monkeypatch.setenv("TUNELOOP_KAFKA__BOOTSTRAP_SERVERS", "long:9092")
    # Equal to the default, and still given.
    monkeypatch.setenv("TUNELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    kafka = load_settings(config).kafka
    assert (kafka.spool_dir, kafka.bootstrap_servers) == (Path("/short"), "127.0.0.1:9092")
    kafka = load_settings(config, kafka={"spool_dir": "/cli", "bootstrap_servers": "cli:9092"}).kafka
    assert (kafka.spool_dir, kafka.bootstrap_servers) == (Path("/cli"), "cli:9092")


def test_short_alias_alone_beats_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_SPOOL_DIR", "/short")
    assert load_settings(write_yaml(tmp_path, {"kafka": {"spool_dir": "/from/yaml"}})).kafka.spool_dir == Path("/short")


def test_signals_from_file_and_env_merge_over_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_yaml(tmp_path, {"monitor": {"signals": {"embedding": {"threshold": 0.8}, "confidence": None}}})
    monkeypatch.setenv("TUNELOOP_MONITOR__SIGNALS__TEXT_OOV__ENABLED", "false")
    signals = load_settings(config).monitor.signals
    defaults = MonitorSettings.DEFAULT_SIGNALS
    assert signals["embedding"] == {"method": "model", "threshold": 0.8}
    assert signals["text_oov"] == {**defaults["text_oov"], "enabled": "false"}
    assert "confidence" not in signals  # null in the file turns a signal off
    assert signals["prediction"] == defaults["prediction"]
    assert signals["text_length"] == defaults["text_length"]


def test_signals_from_env_alone_keep_the_other_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_MONITOR__SIGNALS__EMBEDDING__THRESHOLD", "0.8")
    signals = load_settings().monitor.signals
    assert signals["embedding"] == {"method": "model", "threshold": "0.8"}
    assert set(signals) == set(MonitorSettings.DEFAULT_SIGNALS)


def test_missing_file_and_non_mapping_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(write_yaml(tmp_path, [1, 2]))


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path).serving.port == DEFAULT_PORT


def test_get_settings_reads_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_CONFIG", str(write_yaml(tmp_path, {"serving": {"port": 4000, "workers": 2}})))
    monkeypatch.setenv("TUNELOOP_SERVING__PORT", str(DEFAULT_PORT))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert (settings.serving.port, settings.serving.workers) == (DEFAULT_PORT, 2)
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()


def argv_port(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def use_child_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Make this process's settings variables those the BentoML process gets."""
    for name in list(os.environ):
        if name.startswith("TUNELOOP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("TUNELOOP_"):
            monkeypatch.setenv(name, value)


def test_serve_leaves_options_not_given_to_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.cli import bentoml_command

    config = str(write_yaml(tmp_path, {"serving": {"port": 4000, "host": "10.0.0.1", "workers": 2}}))
    argv, env = bentoml_command("bentoml", {}, config)
    assert (argv_port(argv), argv[argv.index("--host") + 1]) == (4000, "10.0.0.1")
    assert env["TUNELOOP_CONFIG"] == config
    assert not any(name.startswith("TUNELOOP_SERVING__") for name in env)
    # The service, reading the same environment, binds where BentoML was told to.
    use_child_environment(monkeypatch, env)
    assert (load_settings().serving.port, load_settings().serving.workers) == (4000, 2)


def test_serve_options_given_beat_env_and_file_even_when_equal_to_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.cli import bentoml_command

    config = str(write_yaml(tmp_path, {"serving": {"port": 4000, "grpc_port": 9000}}))
    monkeypatch.setenv("TUNELOOP_SERVING__PORT", "5000")
    argv, env = bentoml_command("bentoml", {"port": DEFAULT_PORT, "grpc_port": 0}, config, "/models")
    assert argv_port(argv) == DEFAULT_PORT
    assert (env["TUNELOOP_SERVING__PORT"], env["TUNELOOP_SERVING__GRPC_PORT"]) == (str(DEFAULT_PORT), "0")
    assert env["TUNELOOP_REGISTRY"] == "/models"
    use_child_environment(monkeypatch, env)
    settings = load_settings()
    assert (settings.serving.port, settings.serving.grpc_port, settings.registry) == (DEFAULT_PORT, 0, "/models")


def test_serve_command_passes_only_given_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from service.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as on the real `tuneloop` app
    register(app)
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execvpe", lambda _file, argv, env: calls.append((argv, env)))
    config = str(write_yaml(tmp_path, {"serving": {"port": 4000}}))

    result = CliRunner().invoke(app, ["serve", "--config", config])
    assert result.exit_code == 0, result.output
    assert argv_port(calls[-1][0]) == 4000 and "TUNELOOP_SERVING__PORT" not in calls[-1][1]
    result = CliRunner().invoke(app, ["serve", "--config", config, "--port", str(DEFAULT_PORT)])
    assert result.exit_code == 0, result.output
    assert argv_port(calls[-1][0]) == DEFAULT_PORT and calls[-1][1]["TUNELOOP_SERVING__PORT"] == str(DEFAULT_PORT)

    result = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and len(calls) == 2
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and len(calls) == 2
