"""The event log: CloudEvents on Kafka for predictions, feedback and model events (shared contract)."""
