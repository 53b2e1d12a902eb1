"""The life cycle of a model version, as one table.

candidate ─▶ awaiting_approval ─▶ approved ─▶ production ─▶ retired
    │               │                            │            │
    └─▶ rejected ◀──┘                            └▶ rolled_back└─▶ production (rollback)
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    CANDIDATE = "candidate"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    PRODUCTION = "production"
    RETIRED = "retired"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


TRANSITIONS: dict[State, frozenset[State]] = {
    # Gates passed → wait for an operator; gates failed → rejected.
    State.CANDIDATE: frozenset({State.AWAITING_APPROVAL, State.REJECTED}),
    State.AWAITING_APPROVAL: frozenset({State.APPROVED, State.REJECTED}),
    State.APPROVED: frozenset({State.PRODUCTION, State.REJECTED}),
    # Replaced by a newer promotion → retired; pulled because live metrics fell → rolled_back.
    State.PRODUCTION: frozenset({State.RETIRED, State.ROLLED_BACK}),
    # A retired version comes back only as a rollback target.
    State.RETIRED: frozenset({State.PRODUCTION}),
    State.REJECTED: frozenset(),
    State.ROLLED_BACK: frozenset(),
}


def allowed_targets(current: State) -> list[str]:
    return sorted(s.value for s in TRANSITIONS[current])


def is_allowed(current: State, target: State) -> bool:
    return target in TRANSITIONS[current]
