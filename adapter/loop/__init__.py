"""The adaptation loop: the sidecar (`tuneloop adapt`) that turns feedback into training data, retrains when
drift or fresh labels call for it, gates the candidate against production, and watches a promotion.

    store.py      labelled examples joined from predictions and feedback (SQLAlchemy: SQLite or PostgreSQL)
    joiner.py     the consume loop: events in, examples stored, offsets committed after the store
    policy.py     the YAML policy: triggers, retraining, gates, promotion, rollback
    triggers.py   why a retraining is asked for: alerts, drift events, label volume, a schedule, an operator
    retrain.py    fresh examples + replay → the training pipeline's steps → a gated candidate
    gates/        one unit per gate, each with its own config
    watch.py      after a promotion: live accuracy and error rate, and the automatic rollback
    service.py    the process: the loops above, the webhook, /status and /metrics
    cli.py        `tuneloop adapt`, `tuneloop retrain`
"""
