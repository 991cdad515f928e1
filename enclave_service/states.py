"""The states of an enclave run and the named groups of them, defined once.

Each state is owned by the system, the author or the reviewers (airlock's habit); the message beside
it is what people read. Only :mod:`enclave_service.runs` moves a run from one state to another; every
other module asks it to (a test holds the code to that).
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):  # noqa: UP042  (str() keeps the enum's own form, as the code expects)
    SUBMITTED = "submitted"
    ARCHIVED = "archived"
    CODE_CHECKED = "code_checked"
    BUILT = "built"
    RAN = "ran"
    OUTPUTS_CHECKED = "outputs_checked"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    RELEASED = "released"
    FAILED_ARCHIVED = "failed_archived"
    FAILED_CODE_CHECKED = "failed_code_checked"
    FAILED_BUILT = "failed_built"
    FAILED_RAN = "failed_ran"
    FAILED_OUTPUTS_CHECKED = "failed_outputs_checked"
    FAILED_RELEASED = "failed_released"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"

    @property
    def message(self) -> str:
        return STATE_MESSAGES[self]

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def failed(self) -> bool:
        return self in FAILED


STATE_MESSAGES = {
    State.SUBMITTED: "Submitted: waiting to be unpacked and checked.",
    State.ARCHIVED: "The code archive was unpacked and validated.",
    State.CODE_CHECKED: "The code passed the automatic code checks.",
    State.BUILT: "The analysis image was built and the real data staged; the analysis is running.",
    State.RAN: "The analysis ran to completion against the real data.",
    State.OUTPUTS_CHECKED: "The outputs passed the automatic disclosure checks.",
    State.IN_REVIEW: "Waiting for output reviewers to approve the release.",
    State.APPROVED: "Approved by the reviewers; the release is being packaged.",
    State.RELEASED: "Released: the outputs can be downloaded from this page.",
    State.FAILED_ARCHIVED: "Failed: the code archive could not be unpacked or was not valid.",
    State.FAILED_CODE_CHECKED: "Failed: the code checks found something the enclave does not run.",
    State.FAILED_BUILT: "Failed: the analysis image could not be built or the data not staged.",
    State.FAILED_RAN: "Failed: the analysis did not run to completion.",
    State.FAILED_OUTPUTS_CHECKED: "Failed: the outputs did not pass the disclosure checks.",
    State.FAILED_RELEASED: "Failed: the approved outputs could not be packaged.",
    State.REJECTED: "Rejected by an output reviewer; nothing was released.",
    State.WITHDRAWN: "Withdrawn by its author; nothing was released.",
}

# -- the named groups (the only place sets of states are spelled out) ------------------------------
FAILED = frozenset(s for s in State if s.value.startswith("failed_"))
TERMINAL = frozenset({State.RELEASED, State.REJECTED, State.WITHDRAWN}) | FAILED
# States the pipeline moves on by itself (resumed at start-up); in_review waits for people.
PIPELINE = (
    State.SUBMITTED,
    State.ARCHIVED,
    State.CODE_CHECKED,
    State.BUILT,
    State.RAN,
    State.OUTPUTS_CHECKED,
    State.APPROVED,
)
# The author may withdraw until a decision is taken.
WITHDRAWABLE = frozenset(PIPELINE) - {State.APPROVED} | {State.IN_REVIEW}
# The reviewers have decided: their decisions and comments are no longer blinded.
DECIDED = frozenset({State.APPROVED, State.RELEASED, State.REJECTED, State.FAILED_RELEASED})
# A container may exist for a run only in this state (reconcile removes the others' containers).
RUNNING = frozenset({State.BUILT})
# Staged real data is needed only from here until the run step ends.
NEEDS_DATA = frozenset({State.CODE_CHECKED, State.BUILT})
# Ends that Kinetic hears about as errors.
UNSUCCESSFUL = FAILED | {State.REJECTED, State.WITHDRAWN}


def values(states) -> list[str]:
    return [s.value for s in states]


class StepFailed(Exception):
    """A pipeline step could not succeed; the message is shown to people as it is."""


class RunError(Exception):
    """A request about a run that cannot be honoured: an HTTP status and words for a person.
    Raised by :mod:`enclave_service.runs`; the web layer renders it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
