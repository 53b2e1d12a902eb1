"""Errors raised by the model registry; the CLI and the service translate them at their edges."""


class RegistryError(Exception):
    """Base class of every registry error."""


class VersionNotFoundError(RegistryError):
    def __init__(self, version: str, root: str) -> None:
        super().__init__(f"model version {version!r} not found in registry {root}")
        self.version = version


class CorruptVersionError(RegistryError):
    """A stored file is missing or its sha256 does not match the manifest."""


class IllegalTransitionError(RegistryError):
    def __init__(self, version: str, current: str, target: str, allowed: list[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none (final state)"
        current, target = str(current), str(target)  # a State's own repr names its class
        super().__init__(
            f"cannot move {version} from {current!r} to {target!r}; from {current!r} it may go to: {allowed_text}"
        )


class NoProductionVersionError(RegistryError):
    pass


class NothingToRollBackToError(RegistryError):
    pass


class RegistryBusyError(RegistryError):
    """Another writer holds the registry (its lease has not expired), or kept winning the race to commit."""


class CorruptStateError(RegistryError):
    """No committed state document of the registry can be read."""
