"""Client configuration (TLS, SASL, codec) and the ``tuneloop broker`` command."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from tuneloop.events.broker import TansuBroker, free_port
from tuneloop.events.client_config import common_config, consumer_config, producer_config
from tuneloop.events.errors import EventLogError
from tuneloop.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


def test_tls_and_sasl_reach_every_client_config() -> None:
    settings = KafkaSettings(bootstrap_servers="a:9093, b:9093", security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="pw",
                             ssl_cafile="/ca.pem", ssl_check_hostname=False)
    common = common_config(settings)
    assert common["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert (common["security_protocol"], common["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (common["sasl_plain_username"], common["sasl_plain_password"]) == ("svc", "pw")
    assert (common["ssl_cafile"], common["ssl_check_hostname"]) == ("/ca.pem", False)
    producer, consumer = producer_config(settings), consumer_config(settings, "g")
    for built in (producer, consumer):
        assert common.items() <= built.items()
    # kafka-python rejects keys it does not know only when a client starts: check the names here.
    assert set(producer) <= set(KafkaProducer.DEFAULT_CONFIG)
    assert set(consumer) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert set(common) <= set(KafkaAdminClient.DEFAULT_CONFIG)
    assert producer["acks"] == "all" and consumer["enable_auto_commit"] is False


def test_plaintext_sends_no_tls_or_sasl_options_and_sasl_needs_a_mechanism() -> None:
    assert not any(k.startswith(("ssl_", "sasl_")) for k in common_config(KafkaSettings()))
    with pytest.raises(EventLogError, match="sasl_mechanism"):
        common_config(KafkaSettings(security_protocol="SASL_PLAINTEXT"))


def test_compression_is_lz4_when_installed_else_gzip() -> None:
    has_lz4 = importlib.util.find_spec("lz4") is not None
    assert producer_config(KafkaSettings())["compression_type"] == ("lz4" if has_lz4 else "gzip")
    assert producer_config(KafkaSettings(compression="none"))["compression_type"] is None
    if not has_lz4:
        with pytest.raises(EventLogError, match="lz4"):
            producer_config(KafkaSettings(compression="lz4"))


def test_broker_command_serves_until_sigterm() -> None:
    port = free_port()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import typer
        from tuneloop.events.cli import register
        app = typer.Typer()
        app.callback()(lambda: None)  # a group, as on the real `tuneloop` app
        register(app)
        app(["broker", "--port", "{port}"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        TansuBroker(port=port).wait_ready(30)  # a real metadata request answered on that port
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert b"ready on" in out
    with pytest.raises(OSError):  # Tansu went with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_passwords_stay_out_of_reprs_and_kafka_python_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from kafka.errors import KafkaError

    secret, key_secret = "s3cr3t-sasl-pw", "s3cr3t-key-pw"
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", security_protocol="SASL_SSL",
                             sasl_mechanism="PLAIN", sasl_username="svc", sasl_password=secret,
                             ssl_password=key_secret)
    assert secret not in repr(settings) and key_secret not in repr(settings)
    config = common_config(settings)
    # kafka-python still gets the real values...
    assert config["sasl_plain_password"] == secret and config["ssl_password"] == key_secret
    # ...but its DEBUG log of a client's configuration shows asterisks.
    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(KafkaError):
        KafkaAdminClient(**config, request_timeout_ms=200, bootstrap_timeout_ms=200)
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert secret not in caplog.text and key_secret not in caplog.text
