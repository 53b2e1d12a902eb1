"""The adaptation loop: the sidecar (`tuneloop adapt`) that turns feedback into training data, retrains when
drift or fresh labels call for it, gates the candidate against production, and watches a promotion.

    store.py      labelled examples joined from predictions and feedback (SQLAlchemy: SQLite or PostgreSQL)
"""
