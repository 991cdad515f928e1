"""Output review: independent decisions by members of the reviewers group.

Rules (each enforced in one transaction, so two reviewers clicking at once cannot both count as
"the last"):
- only a member of the reviewers group may review, and only a run that is ``in_review``;
- nobody reviews a run of an analysis they are on (the author, and any co-researcher);
- one decision per reviewer per run (a second one is refused, not merged);
- ``required_approvals`` approvals (default 2) → ``approved``; any rejection → ``rejected``
  (a rejection must say why: the comment is required, because the author must read the reason);
- blinded: until the run is decided, a reviewer sees only their own decision and how many are in;
  the author sees decisions and comments once the run is decided.
"""
from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from . import db as dbm
from .db import Review, Run, State


class ReviewError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


DECISIONS = ("approve", "reject")


def record_review(session, run_id: str, reviewer: str, decision: str, comment: str) -> State:
    """Store one decision and move the run when it is decided. Returns the run's state after."""
    decision = (decision or "").strip().lower()
    comment = (comment or "").strip()
    if decision not in DECISIONS:
        raise ReviewError(400, "decision must be 'approve' or 'reject'")
    if decision == "reject" and not comment:
        raise ReviewError(400, "a rejection needs a comment that tells the author why")
    if len(comment) > 5000:
        raise ReviewError(400, "the comment is longer than 5000 characters")
    run = session.get(Run, run_id)
    if run is None:
        raise ReviewError(404, "no such run")
    import json
    if reviewer == run.author or reviewer in json.loads(run.collaborators or "[]"):
        raise ReviewError(403, "you cannot review a run of an analysis you are on")
    if run.state != State.IN_REVIEW.value:
        raise ReviewError(409, f"this run is not waiting for review (it is {run.state})")
    if any(r.reviewer == reviewer for r in run.reviews):
        raise ReviewError(409, "you have already reviewed this run; decisions cannot be changed")
    session.add(Review(run_id=run_id, reviewer=reviewer, decision=decision, comment=comment))
    try:
        session.flush()
    except IntegrityError:
        raise ReviewError(409, "you have already reviewed this run; decisions cannot be changed") from None
    dbm.add_event(session, run_id, "review", f"A reviewer decided: {decision}.", actor=reviewer)
    session.refresh(run)
    approvals = sum(1 for r in run.reviews if r.decision == "approve")
    if decision == "reject":
        run.state = State.REJECTED.value
        run.failure = "Rejected by an output reviewer."
        dbm.add_event(session, run_id, "state", "An output reviewer rejected the release.",
                      state=run.state)
    elif approvals >= run.required_approvals:
        run.state = State.APPROVED.value
        dbm.add_event(session, run_id, "state", f"{approvals} reviewers approved the release.",
                      state=run.state)
    return State(run.state)


def visible_reviews(run: dict, reviews: list[dict], viewer: str, is_reviewer: bool) -> dict:
    """What ``viewer`` may see of the reviews (blinding)."""
    decided = run["state"] in (State.APPROVED.value, State.RELEASED.value, State.REJECTED.value,
                               State.FAILED_RELEASED.value)
    out = {"required": run["required_approvals"], "received": len(reviews), "blinded": not decided,
           "reviews": []}
    if decided:
        out["reviews"] = [{"reviewer": r["reviewer"], "decision": r["decision"], "comment": r["comment"],
                           "time": r["time"]} for r in reviews]
    elif is_reviewer:
        out["reviews"] = [{"reviewer": r["reviewer"], "decision": r["decision"], "comment": r["comment"],
                           "time": r["time"]} for r in reviews if r["reviewer"] == viewer]
    out["mine"] = next((r["decision"] for r in reviews if r["reviewer"] == viewer), None)
    return out
