"""What operators change, for the API and the console alike: each write checks the role, names the token's
owner as the actor in the registry's audit log (published on ``tuneloop.model-events`` by the registry's
listener), and turns registry refusals into admin errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from adapter.admin.errors import AdminError, ConflictError, NotFoundError
from adapter.admin.tokens import Principal
from adapter.loop.triggers import Triggers
from tuneloop.registry import (CorruptVersionError, IllegalTransitionError, NoProductionVersionError,
                               NothingToRollBackToError, Registry, RegistryBusyError, RegistryError, State,
                               VersionNotFoundError)


class BusyError(AdminError):
    """Another writer holds the registry: try again in a moment."""

    status = 503


@contextmanager
def registry_refusals() -> Iterator[None]:
    try:
        yield
    except VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc
    except (IllegalTransitionError, NothingToRollBackToError, NoProductionVersionError, CorruptVersionError) as exc:
        raise ConflictError(str(exc)) from exc
    except RegistryBusyError as exc:
        raise BusyError(str(exc)) from exc
    except RegistryError as exc:  # the rest of the registry's refusals are about the request's target
        raise ConflictError(str(exc)) from exc


@dataclass
class Actions:
    registry: Registry
    triggers: Triggers
    surface: str  # "admin API" or "console": part of every audited reason

    def _reason(self, reason: str | None, default: str) -> str:
        text = (reason or "").strip()
        return f"{text} (via the {self.surface})" if text else f"{default} (via the {self.surface})"

    def approve(self, who: Principal, version: str, reason: str | None, promote: bool) -> State:
        who.require_operator()
        with registry_refusals():
            self.registry.transition(version, State.APPROVED, who.name, self._reason(reason, "approved"))
            if promote:
                self.registry.promote(version, who.name, self._reason(reason, "approved and promoted"))
            return self.registry.state(version)

    def reject(self, who: Principal, version: str, reason: str) -> State:
        who.require_operator()
        if not reason.strip():
            raise AdminError("a rejection needs a reason")
        with registry_refusals():
            self.registry.transition(version, State.REJECTED, who.name, self._reason(reason, ""))
            return self.registry.state(version)

    def promote(self, who: Principal, version: str, reason: str | None) -> str | None:
        """Promote an approved version; returns the version it replaced."""
        who.require_operator()
        with registry_refusals():
            return self.registry.promote(version, who.name, self._reason(reason, "promoted"))

    def rollback(self, who: Principal, reason: str | None, expect: str | None) -> tuple[str, str]:
        """(pulled, restored): the previous production version comes back."""
        who.require_operator()
        with registry_refusals():
            return self.registry.rollback(who.name, self._reason(reason, "rolled back by an operator"),
                                          expect=expect)

    def retrain(self, who: Principal, reason: str) -> int:
        """A manual trigger; the adapter runs it once enough fresh labels are there."""
        who.require_operator()
        if not reason.strip():
            raise AdminError("say why a retraining is wanted")
        return self.triggers.manual(who.name, self._reason(reason, ""))

