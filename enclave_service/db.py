"""Storage for the enclave: runs, their audit events, reviews, releases and downloads.

SQLAlchemy 2 (SQLite under the state dir by default, any URL in production). The ORM is
synchronous; every database call goes through :meth:`Database.run`, which executes it on one
worker thread, so the service's event loop never blocks on the database and SQLite writes are
serialized (no "database is locked" between two coroutines).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .states import State

T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")


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
    author: Mapped[str] = mapped_column(String(255), index=True)  # hub user name = uuid
    author_email: Mapped[str] = mapped_column(String(320), default="")
    collaborators: Mapped[list] = mapped_column(JSON, default=list)  # uuids on the analysis
    message: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(32), default=State.SUBMITTED.value, index=True)
    failure: Mapped[str] = mapped_column(Text, default="")  # plain words
    created: Mapped[float] = mapped_column(Float, default=_now)
    updated: Mapped[float] = mapped_column(Float, default=_now, onupdate=_now)
    archive_sha256: Mapped[str] = mapped_column(String(64), default="")
    archive_bytes: Mapped[int] = mapped_column(Integer, default=0)
    code_report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    output_report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    input_records: Mapped[int | None] = mapped_column(Integer, nullable=True)  # rows of the staged data
    image: Mapped[str] = mapped_column(String(255), default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")  # truncated run log
    required_approvals: Mapped[int] = mapped_column(Integer, default=2)
    analysis_api_key: Mapped[str] = mapped_column(String(255), default="")
    kinetic_run_key: Mapped[str] = mapped_column(String(255), default="")
    kinetic_run_id: Mapped[str] = mapped_column(String(64), default="")
    kinetic_signed_id: Mapped[str] = mapped_column(String(255), default="")
    kinetic_completed: Mapped[str] = mapped_column(String(16), default="")  # '', success, failure
    mail_sent: Mapped[bool] = mapped_column(Boolean, default=False)

    events: Mapped[list[Event]] = relationship(
        back_populates="run", order_by="Event.id", cascade="all, delete-orphan"
    )
    reviews: Mapped[list[Review]] = relationship(
        back_populates="run", order_by="Review.id", cascade="all, delete-orphan"
    )


@dataclasses.dataclass
class RunRecord:
    """A run as the rest of the service sees it: detached from the session, JSON already parsed,
    ``state`` typed. Reading one never writes anything back; changes go through
    :mod:`enclave_service.runs`."""

    id: str
    analysis_id: str
    analysis_title: str
    author: str
    author_email: str
    collaborators: list
    message: str
    state: State
    failure: str
    created: float
    updated: float
    archive_sha256: str
    archive_bytes: int
    code_report: dict | None
    output_report: dict | None
    input_records: int | None
    image: str
    exit_code: int | None
    logs: str
    required_approvals: int
    analysis_api_key: str
    kinetic_run_key: str
    kinetic_run_id: str
    kinetic_signed_id: str
    kinetic_completed: str
    mail_sent: bool

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        kw = {f.name: getattr(run, f.name) for f in dataclasses.fields(cls)}
        kw["state"] = State(run.state)
        kw["collaborators"] = list(run.collaborators or [])
        return cls(**kw)

    def on_analysis(self, name: str) -> bool:
        """Is ``name`` the author or a co-researcher of this run's analysis?"""
        return name == self.author or name in self.collaborators


class Event(Base):
    """The audit log: every transition, review, download and notable failure."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    time: Mapped[float] = mapped_column(Float, default=_now)
    actor: Mapped[str] = mapped_column(String(255), default="system")
    kind: Mapped[str] = mapped_column(String(32))  # state, review, download, withdraw, kinetic, mail
    state: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    run: Mapped[Run] = relationship(back_populates="events")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("run_id", "reviewer", name="one_review_per_reviewer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(255))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    time: Mapped[float] = mapped_column(Float, default=_now)
    run: Mapped[Run] = relationship(back_populates="reviews")


class Release(Base):
    __tablename__ = "releases"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict] = mapped_column(JSON)  # {path: sha256}
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

        upgrade(self.engine)
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
def add_event(
    session: Session, run_id: str, kind: str, message: str, *, actor: str = "system", state: str = ""
) -> Event:
    ev = Event(run_id=run_id, kind=kind, message=message, actor=actor, state=state)
    session.add(ev)
    return ev


def run_ids_in(session: Session, states) -> list[str]:
    values = [s.value for s in states]
    return list(session.scalars(select(Run.id).where(Run.state.in_(values)).order_by(Run.created)))


# -- schema migrations (Alembic, as JupyterHub does) --------------------------------------------
def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine, revision: str = "head") -> None:
    """Bring the database to ``revision``. A database made before migrations existed (tables but no
    ``alembic_version``) is first stamped as the first revision, which is that schema."""
    from alembic import command

    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # SQLite alters a table by copying it; foreign keys would refuse the drop
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        with conn.begin():
            cfg = _alembic_config(conn)
            tables = set(inspect(conn).get_table_names())
            if "runs" in tables and "alembic_version" not in tables:
                command.stamp(cfg, "0001")
            command.upgrade(cfg, revision)
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
