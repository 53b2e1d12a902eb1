"""kafka-python configuration: one function builds what every client shares (brokers, TLS, SASL), the
producer and consumer add their own on top, and the topics are created from the same settings."""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import SecretStr

from tuneloop.events.errors import EventLogError
from tuneloop.settings import KafkaSettings


class _Masked(str):
    """A password as kafka-python needs it (a str), whose repr is asterisks: kafka-python logs a client's
    whole configuration at DEBUG (the dict's repr), and that must not carry the password."""

    def __repr__(self) -> str:
        return "'**********'"


def _reveal(secret: SecretStr | None) -> _Masked | None:
    return None if secret is None else _Masked(secret.get_secret_value())


def common_config(settings: KafkaSettings) -> dict[str, Any]:
    """Settings every client (producer, consumer, admin) takes: brokers, client id, TLS and SASL."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()],
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl_check_hostname"] = settings.ssl_check_hostname
        tls = {"ssl_cafile": settings.ssl_cafile, "ssl_certfile": settings.ssl_certfile,
               "ssl_keyfile": settings.ssl_keyfile, "ssl_password": _reveal(settings.ssl_password)}
        config.update({k: v for k, v in tls.items() if v is not None})
    if settings.security_protocol.startswith("SASL_"):
        if settings.sasl_mechanism is None:
            raise EventLogError(f"security_protocol {settings.security_protocol} needs kafka.sasl_mechanism")
        # kafka-python names these "plain" but reads them for the SCRAM mechanisms too.
        config.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                      sasl_plain_password=_reveal(settings.sasl_password))
    return config


def resolve_compression(setting: str) -> str | None:
    """The producer's codec: lz4 when asked for (or "auto") and its package is installed, else gzip."""
    if setting == "none":
        return None
    lz4_available = importlib.util.find_spec("lz4") is not None
    if setting == "lz4" and not lz4_available:
        raise EventLogError("kafka.compression is lz4 but the lz4 package is not installed")
    if setting == "auto":
        return "lz4" if lz4_available else "gzip"
    return setting


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    return {
        **common_config(settings),
        "acks": "all",
        "retries": settings.retries,
        "compression_type": resolve_compression(settings.compression),
        "linger_ms": settings.linger_ms,
        "batch_size": settings.batch_bytes,
        # send() may block this long on missing metadata; the caller is our sender thread, never a request.
        "max_block_ms": 2000,
        # Without a broker the constructor waits this long; our replayer retries rather than wait 30 s.
        "bootstrap_timeout_ms": settings.connect_timeout_ms,
        "request_timeout_ms": settings.request_timeout_ms,
        "delivery_timeout_ms": settings.delivery_timeout_ms,
        "reconnect_backoff_max_ms": 2000,
    }


def consumer_config(settings: KafkaSettings, group_id: str, auto_offset_reset: str = "earliest") -> dict[str, Any]:
    return {
        **common_config(settings),
        "group_id": group_id,
        "enable_auto_commit": False,  # commits follow the caller's persisting, never a timer
        "auto_offset_reset": auto_offset_reset,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }


def topic_names(settings: KafkaSettings) -> dict[str, str]:
    """Topic kind (the schemas' ``topic_kind``) → the configured topic name."""
    return {"predictions": settings.predictions_topic, "feedback": settings.feedback_topic,
            "model-events": settings.model_events_topic}


def ensure_topics(settings: KafkaSettings, timeout_ms: int = 5000) -> None:
    """Create the three topics when missing, with the configured partitions."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**common_config(settings), request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, settings.partitions, settings.replication_factor)
                   for name in topic_names(settings).values() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another process created it first
                pass
    finally:
        admin.close()
