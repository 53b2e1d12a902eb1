"""Errors raised by the adapter (training, export); the CLI prints them without a traceback."""


class AdapterError(Exception):
    """Base class of every adapter error."""


class DataError(AdapterError):
    """The labelled data cannot be used as given (missing file, column, labels, …)."""


class TrainingError(AdapterError):
    pass


class ExportError(AdapterError):
    pass


class ParityError(ExportError):
    """An exported graph disagrees with the PyTorch model beyond the thresholds in settings."""


class StoreError(AdapterError):
    """The labelled-example store cannot be reached or used."""


class PolicyError(AdapterError):
    """The adaptation policy file is missing or invalid."""


class WebhookError(AdapterError):
    """An alert notification that cannot be accepted (bad token, bad payload)."""
