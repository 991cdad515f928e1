"""The enclave on PostgreSQL, for real: a throwaway PostgreSQL server (tests/support.py running_postgres), the schema
built by Alembic from its first revision (and a database of the first schema, with its runs,
upgraded and taken back down), and the service itself run on it by the hub — submit → checks →
isolated run → two approvals → released — with its metrics read from that database."""

import time

import pytest
from sqlalchemy import create_engine, inspect, text

from enclave_service.archive import create_archive
from enclave_service.db import Database, Release, Run, RunRecord, upgrade
from enclave_service.states import State
from kinetic_auth.standin.seed import ADA
from tests.support import free_port

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import (
    GOOD_MAIN,
    EnclaveHub,
    approve_twice,
    make_home,
    metric_samples,
    metric_value,
    wait_for_state,
)

RUN_0001 = {
    "id": "r1",
    "analysis_id": "101",
    "analysis_title": "T",
    "author": "ada",
    "author_email": "a@x",
    "collaborators": '["grace"]',
    "message": "m",
    "state": "in_review",
    "failure": "",
    "created": 1.0,
    "updated": 2.0,
    "archive_sha256": "abc",
    "archive_bytes": 10,
    "code_report": "",
    "output_report": '{"verdict": "pass", "manifest": {"s.csv": "00"}}',
    "image": "img",
    "exit_code": 0,
    "logs": "",
    "required_approvals": 2,
    "analysis_api_key": "",
    "kinetic_run_key": "",
    "kinetic_run_id": "",
    "kinetic_signed_id": "",
    "kinetic_completed": "",
    "mail_sent": False,
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'enclave.sqlite'}"
    return request.getfixturevalue("postgres").database("migrations")


def test_the_schema_is_built_from_the_first_revision_and_old_runs_survive_upgrades(empty_db_url):
    url = empty_db_url
    engine = create_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:  # a run and a release as the first schema stored them
        cols = ", ".join(RUN_0001)
        conn.execute(
            text(f"INSERT INTO runs ({cols}) VALUES ({', '.join(':' + k for k in RUN_0001)})"), RUN_0001
        )
        conn.execute(text("INSERT INTO releases VALUES ('r1', '/x', '00', 5, '{\"s.csv\": \"00\"}', 3.0)"))
    db = Database(url)  # the service's own start-up: upgrade to head
    try:
        run = db.run_sync(lambda s: RunRecord.of(s.get(Run, "r1")))
        assert run.state is State.IN_REVIEW and run.collaborators == ["grace"]
        assert run.code_report is None and run.output_report["manifest"] == {"s.csv": "00"}
        assert db.run_sync(lambda s: s.get(Release, "r1").manifest) == {"s.csv": "00"}
    finally:
        db.close()
    types = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("runs")}
    assert types["code_report"] == "JSON" and types["input_records"] == "INTEGER"
    upgrade_down_and_up(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        assert conn.execute(text("SELECT CAST(collaborators AS TEXT) FROM runs")).scalar() == '["grace"]'
    engine.dispose()


def upgrade_down_and_up(engine):
    """Down to the first revision (reports back to text, '' for none) and up again."""
    from alembic import command

    from enclave_service.db import _alembic_config

    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # as upgrade() does: SQLite copies tables to alter them
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        with conn.begin():
            command.downgrade(_alembic_config(conn), "0001")
            assert conn.execute(text("SELECT code_report FROM runs")).scalar() == ""
    upgrade(engine)


@pytest.fixture(scope="module")
def pg_enclave_hub(standin, r_base_image, postgres, tmp_path_factory):
    """A hub whose enclave service keeps its runs in PostgreSQL (EnclaveService.db_url)."""
    from enclave_service.mailsink import MailSink

    base = tmp_path_factory.mktemp("enclave-hub-pg")
    smtp_port = free_port()
    sink = MailSink(base / "mail", port=smtp_port).start()
    hub = EnclaveHub(standin, base, base / "mail", smtp_port, db_url=postgres.database("enclave"))
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        sink.stop()


async def test_a_run_goes_through_to_release_on_postgresql(pg_enclave_hub, postgres, tmp_path):
    hub = pg_enclave_hub
    home = make_home(tmp_path / "home", GOOD_MAIN.format(extra=""))
    archive = await create_archive(home, tmp_path / "a.tar.zst")
    r = hub.submit_archive(ADA, 101, archive.path, message="on postgres")
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    run = wait_for_state(
        hub,
        ADA,
        run_id,
        {"in_review"}
        | {f"failed_{s}" for s in ("archived", "code_checked", "built", "ran", "outputs_checked")},
    )
    assert run["state"] == "in_review", run["failure"]
    run = approve_twice(hub, run_id, ADA)
    assert run["state"] == "released", run["failure"]
    assert hub.call(ADA, "GET", f"api/runs/{run_id}/download").status_code == 200

    # it is PostgreSQL that holds the run, its timeline, the reviews and the download record
    engine = create_engine(hub.db_url)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT state FROM runs WHERE id = :i"), {"i": run_id}).scalar() == "released"
        )
        states = [
            row[0]
            for row in conn.execute(
                text("SELECT state FROM events WHERE run_id = :i AND kind = 'state' ORDER BY id"),
                {"i": run_id},
            )
        ]
        assert states == [
            "submitted",
            "archived",
            "code_checked",
            "built",
            "ran",
            "outputs_checked",
            "in_review",
            "approved",
            "released",
        ]
        assert (
            conn.execute(text("SELECT count(*) FROM reviews WHERE run_id = :i"), {"i": run_id}).scalar() == 2
        )
        assert (
            conn.execute(text("SELECT count(*) FROM downloads WHERE run_id = :i"), {"i": run_id}).scalar()
            == 1
        )
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    engine.dispose()
    assert not list(hub.enclave_state.glob("*.sqlite"))  # no SQLite file on the side

    time.sleep(1.1)
    m = metric_samples(hub.metrics())
    assert metric_value(m, "enclave_runs", state="released") == 1
    assert metric_value(m, "enclave_step_duration_seconds_count", step="release", outcome="ok") == 1
