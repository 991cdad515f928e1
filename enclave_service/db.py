"""Storage for the enclave: runs, their audit events, reviews, releases and downloads.

SQLAlchemy 2 (SQLite under the state dir by default, any URL in production). The ORM is
synchronous; every database call goes through :meth:`Database.run`, which executes it on one
worker thread, so the service's event loop never blocks on the database and SQLite writes are
serialized (no "database is locked" between two coroutines).
"""
from __future__ import annotations

import asyncio
import enum
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from sqlalchemy import (Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

T = TypeVar("T")


class State(str, enum.Enum):
    """Where a run is. Each state is owned by the system, the author or the reviewers
    (airlock's habit); the message beside it is what people read."""

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
        return self.value.startswith("failed_")


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
TERMINAL = frozenset({State.RELEASED, State.REJECTED, State.WITHDRAWN} |
                     {s for s in State if s.value.startswith("failed_")})
# States the pipeline moves on by itself (resumed at start-up); in_review waits for people.
PIPELINE_STATES = (State.SUBMITTED, State.ARCHIVED, State.CODE_CHECKED, State.BUILT, State.RAN,
                   State.OUTPUTS_CHECKED, State.APPROVED)
WITHDRAWABLE = frozenset(PIPELINE_STATES) - {State.APPROVED} | {State.IN_REVIEW}


class Base(DeclarativeBase):
    pass


def _now() -> float:
    return time.time()


def new_run_id() -> str:
    return secrets.token_hex(6)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_run_id)
    analysis_id: Mapped[str] = mapped_column(String(64), index=True)
    analysis_title: Mapped[str] = mapped_column(String(500), default="")
    author: Mapped[str] = mapped_column(String(255), index=True)        # hub user name = uuid
    author_email: Mapped[str] = mapped_column(String(320), default="")
    collaborators: Mapped[str] = mapped_column(Text, default="[]")      # uuids on the analysis (JSON)
    message: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(32), default=State.SUBMITTED.value, index=True)
    failure: Mapped[str] = mapped_column(Text, default="")              # plain words
    created: Mapped[float] = mapped_column(Float, default=_now)
    updated: Mapped[float] = mapped_column(Float, default=_now, onupdate=_now)
    archive_sha256: Mapped[str] = mapped_column(String(64), default="")
    archive_bytes: Mapped[int] = mapped_column(Integer, default=0)
    code_report: Mapped[str] = mapped_column(Text, default="")          # JSON
    output_report: Mapped[str] = mapped_column(Text, default="")        # JSON
    image: Mapped[str] = mapped_column(String(255), default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")                 # truncated run log
    required_approvals: Mapped[int] = mapped_column(Integer, default=2)
    analysis_api_key: Mapped[str] = mapped_column(String(255), default="")
    kinetic_run_key: Mapped[str] = mapped_column(String(255), default="")
    kinetic_run_id: Mapped[str] = mapped_column(String(64), default="")
    kinetic_signed_id: Mapped[str] = mapped_column(String(255), default="")
    kinetic_completed: Mapped[str] = mapped_column(String(16), default="")  # '', success, failure
    mail_sent: Mapped[bool] = mapped_column(Boolean, default=False)

    events: Mapped[list["Event"]] = relationship(back_populates="run", order_by="Event.id",
                                                 cascade="all, delete-orphan")
    reviews: Mapped[list["Review"]] = relationship(back_populates="run", order_by="Review.id",
                                                   cascade="all, delete-orphan")

    @property
    def state_enum(self) -> State:
        return State(self.state)

    def json_field(self, name: str):
        raw = getattr(self, name)
        return json.loads(raw) if raw else None


class Event(Base):
    """The audit log: every transition, review, download and notable failure."""
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    time: Mapped[float] = mapped_column(Float, default=_now)
    actor: Mapped[str] = mapped_column(String(255), default="system")
    kind: Mapped[str] = mapped_column(String(32))      # state, review, download, withdraw, kinetic, mail
    state: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    run: Mapped[Run] = relationship(back_populates="events")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("run_id", "reviewer", name="one_review_per_reviewer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(255))
    decision: Mapped[str] = mapped_column(String(16))   # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    time: Mapped[float] = mapped_column(Float, default=_now)
    run: Mapped[Run] = relationship(back_populates="reviews")


class Release(Base):
    __tablename__ = "releases"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[str] = mapped_column(Text)          # JSON {path: sha256}
    time: Mapped[float] = mapped_column(Float, default=_now)


class Download(Base):
    __tablename__ = "downloads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    user: Mapped[str] = mapped_column(String(255))
    ip: Mapped[str] = mapped_column(String(64), default="")
    time: Mapped[float] = mapped_column(Float, default=_now)


class Database:
    """One engine, one worker thread; ``await db.run(fn, *args)`` calls ``fn(session, *args)``
    inside a transaction that is committed when ``fn`` returns and rolled back when it raises."""

    def __init__(self, url: str):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enclave-db")

    def run_sync(self, fn: Callable[..., T], *args) -> T:
        with self.sessions() as session, session.begin():
            return fn(session, *args)

    async def run(self, fn: Callable[..., T], *args) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


# -- small helpers used inside db.run(...) ------------------------------------------------------
def add_event(session: Session, run_id: str, kind: str, message: str, *, actor: str = "system",
              state: str = "") -> Event:
    ev = Event(run_id=run_id, kind=kind, message=message, actor=actor, state=state)
    session.add(ev)
    return ev


def get_run(session: Session, run_id: str) -> Run | None:
    return session.get(Run, run_id)


def run_ids_in(session: Session, states) -> list[str]:
    values = [s.value for s in states]
    return list(session.scalars(select(Run.id).where(Run.state.in_(values)).order_by(Run.created)))
