"""Prometheus metrics of the enclave, served at ``/services/enclave/metrics`` (behind hub auth).

Two kinds, kept apart:

* **Counted as they happen** by the state owner (:mod:`enclave_service.runs`) when it records a
  step's outcome or a submission: step durations, failures by step, archive sizes. They live in
  this process and start from zero when the service restarts (Prometheus' ``rate()`` and
  ``increase()`` handle the reset).
* **Read from the database** at scrape time: runs by state and how long the longest-waiting run of
  each unfinished state has waited. The database is the truth, so these survive restarts and agree
  with the pages. The two queries run on the database's worker thread (:meth:`Database.run`); the
  event loop never waits on them, and a burst of scrapes within ``min_refresh_seconds`` shares one
  reading.

Each service has its own registry (not prometheus-client's global one), so several pipelines in one
process (the tests, the bench) never collide over metric names.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import and_, func, select

from .db import Database, Event, Run
from .states import TERMINAL, State

# The hub scope a token needs to read the enclave's metrics: JupyterHub's own ``read:metrics``
# (the one /hub/metrics asks for), so one scrape token reads both and nothing new has to be
# declared in the hub's configuration. Admins hold it; so does a scrape service given a role
# with it (``hub_integration.add_metrics_reader``). The token also needs
# ``access:services!service=enclave``, as every call to the service does.
METRICS_SCOPE = "read:metrics"

WAITING = tuple(s for s in State if s not in TERMINAL)  # states a run can sit in
# Steps take from milliseconds (review) to an hour (build, run): buckets cover both ends.
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
ARCHIVE_BUCKETS = tuple(2**k for k in (10, 14, 16, 18, 20, 22, 24, 26, 28))  # 1 KiB … 256 MiB


class Metrics:
    def __init__(self, min_refresh_seconds: float = 1.0):
        self.registry = CollectorRegistry()
        self.step_seconds = Histogram(
            "enclave_step_duration_seconds",
            "Time a pipeline step took, by step and outcome (ok | failed).",
            ["step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.step_failures = Counter(
            "enclave_step_failures",
            "Pipeline steps that ended in a failed_* state, by step.",
            ["step"],
            registry=self.registry,
        )
        self.archive_bytes = Histogram(
            "enclave_archive_bytes",
            "Size of each submitted code archive (bytes).",
            buckets=ARCHIVE_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(namespace="enclave", registry=self.registry)
        self.registry.register(_FromDatabase(self))
        self.min_refresh_seconds = min_refresh_seconds
        self.by_state: dict[str, int] = {}
        self.oldest_entered: dict[str, float] = {}
        self.read_at = 0.0  # time.time() of the last database reading
        self._lock = asyncio.Lock()

    # -- counted as it happens (called by the state owner) -----------------------------------------
    def step_done(self, step: str, target: State, seconds: float | None) -> None:
        outcome = "failed" if target.failed else "ok"
        if seconds is not None:
            self.step_seconds.labels(step, outcome).observe(seconds)
        if target.failed:
            self.step_failures.labels(step).inc()

    def submitted(self, archive_bytes: int) -> None:
        self.archive_bytes.observe(archive_bytes)

    # -- read from the database at scrape time ---------------------------------------------------
    async def refresh(self, db: Database) -> None:
        async with self._lock:
            if time.time() - self.read_at < self.min_refresh_seconds:
                return
            self.by_state, self.oldest_entered = await db.run(read_states)
            self.read_at = time.time()

    async def render(self, db: Database) -> bytes:
        """The exposition text, read fresh (the database part at most ``min_refresh_seconds`` old)."""
        await self.refresh(db)
        return await asyncio.to_thread(generate_latest, self.registry)


def read_states(session) -> tuple[dict[str, int], dict[str, float]]:
    """(runs per state, for each unfinished state the time its longest-waiting run entered it).

    A run entered its state at the last audit event that names that state (every transition
    writes one in the same transaction)."""
    counts = dict(session.execute(select(Run.state, func.count()).group_by(Run.state)).all())
    entered = (
        select(Run.state.label("state"), func.max(Event.time).label("since"))
        .join(Event, and_(Event.run_id == Run.id, Event.state == Run.state))
        .where(Run.state.in_([s.value for s in WAITING]))
        .group_by(Run.id, Run.state)
        .subquery()
    )
    oldest = dict(
        session.execute(select(entered.c.state, func.min(entered.c.since)).group_by(entered.c.state)).all()
    )
    return {k: int(v) for k, v in counts.items()}, {k: float(v) for k, v in oldest.items()}


class _FromDatabase:
    """A collector over the last database reading (collect() must not do I/O: it runs inside
    generate_latest)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []  # names are known only at collect(); the registry then checks nothing twice

    def collect(self):
        runs = GaugeMetricFamily("enclave_runs", "Runs in each state (from the database).", labels=["state"])
        for s in State:
            runs.add_metric([s.value], self.m.by_state.get(s.value, 0))
        yield runs
        age = GaugeMetricFamily(
            "enclave_queue_age_seconds",
            "Seconds the longest-waiting run of each unfinished state has been "
            "in it (0 when none is): in_review is the reviewers' queue, submitted the pipeline's.",
            labels=["state"],
        )
        now = self.m.read_at or time.time()
        for s in WAITING:
            since = self.m.oldest_entered.get(s.value)
            age.add_metric([s.value], max(0.0, now - since) if since else 0.0)
        yield age
        yield GaugeMetricFamily(
            "enclave_metrics_read_timestamp_seconds",
            "When the database part of these metrics was read (Unix time).",
            value=self.m.read_at,
        )
