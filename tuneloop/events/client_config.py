"""kafka-python settings every client shares: where the brokers are, TLS and SASL."""

from __future__ import annotations

from typing import Any

from tuneloop.settings import KafkaSettings


def common_config(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.security_protocol,
    }
    optional = {
        "sasl_mechanism": settings.sasl_mechanism,
        "sasl_plain_username": settings.sasl_username,
        "sasl_plain_password": settings.sasl_password,
        "ssl_cafile": settings.ssl_cafile,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    return config


def topic_names(settings: KafkaSettings) -> dict[str, str]:
    """Topic kind (the schemas' ``topic_kind``) → the configured topic name."""
    return {"predictions": settings.predictions_topic, "feedback": settings.feedback_topic,
            "model-events": settings.model_events_topic}


def ensure_topics(settings: KafkaSettings, timeout_ms: int = 5000) -> None:
    """Create the three topics when missing, with the configured partitions."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**common_config(settings), request_timeout_ms=timeout_ms)
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
