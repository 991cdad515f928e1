"""W7, what a finished run leaves behind: its code folder and analysis image go when it ends
(a shared image only with its last user), the janitor deletes archives and outputs after the
retention period and release zips after theirs, the audit trail stays, and a download of a
deleted release answers 410 Gone. A Pipeline without a hub (as in test_service_units); the image
test builds a real analysis image on the cached R base image."""

import asyncio
import hashlib
import json
import subprocess
import time
import uuid
from types import SimpleNamespace

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.web import Application

from enclave_service import db as dbm
from enclave_service.api import DownloadHandler
from enclave_service.app import EnclaveService
from enclave_service.db import Event, Release, Run, State
from enclave_service.retention import DAY
from enclave_service.web import Caller, run_detail
from tests.support import free_port

from .conftest import needs_podman
from .test_service_units import add_run, make_pipeline

NOW = 1_900_000_000.0


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def write_project(p, run_id: str, main_r: str) -> None:
    project = p.code_dir(run_id) / "kinetic"
    (project / "data").mkdir(parents=True)
    (project / "main.r").write_text(main_r)
    (project / "data" / "synthetic.csv").write_text("x\n1\n")


async def finished_run(p, state: State, ended: float, released: float | None = None) -> str:
    """A run that reached ``state`` at ``ended``, with its archive, outputs and (released) zip on disk."""
    run_id = await add_run(p, state)
    d = p.run_dir(run_id)
    (d / "output").mkdir(parents=True)
    (d / "output" / "summary.csv").write_text("course,students\nbiology,12\n")
    p.archive_path(run_id).write_bytes(b"zstd archive bytes")
    if released:
        p.release_path(run_id).write_bytes(b"PK release zip")

    def tx(s):
        ev = dbm.add_event(s, run_id, "state", f"Reached {state.value}.", state=state.value)
        s.flush()
        ev.time = ended
        if released:
            s.add(
                Release(
                    run_id=run_id,
                    path=str(p.release_path(run_id)),
                    bytes=14,
                    time=released,
                    sha256=hashlib.sha256(b"PK release zip").hexdigest(),
                    manifest={"summary.csv": "0" * 64},
                )
            )

    await p.db.run(tx)
    return run_id


async def events(p, run_id, kind=None):
    def q(s):
        rows = s.query(Event).filter_by(run_id=run_id)
        return [e.message for e in rows if kind is None or e.kind == kind]

    return await p.db.run(q)


@needs_podman
async def test_a_finished_run_loses_its_code_and_image_but_a_shared_image_waits_for_its_last_run(
    tmp_path, r_base_image
):
    p = make_pipeline(tmp_path)
    main_r = f"# retention test {uuid.uuid4().hex}\ncat('hello\\n')\n"  # content of its own: own image
    a = await add_run(p, State.CODE_CHECKED)
    b = await add_run(p, State.CODE_CHECKED)
    tag = None
    try:
        for run_id in (a, b):  # the same code twice: one image, built once, used by both
            write_project(p, run_id, main_r)
            await p.step_build(await p.load(run_id))
            await p.runs.transition(run_id, State.CODE_CHECKED, State.BUILT, "built")
        tag = (await p.load(a)).image
        assert tag.startswith("localhost/kinetic-analysis:") and (await p.load(b)).image == tag
        assert image_exists(tag)

        await p.runs.transition(a, State.BUILT, State.FAILED_RAN, "exit 1", failure="exit 1")
        await p.finish(a)
        assert not p.code_dir(a).exists() and not p.data_dir(a).exists()
        assert image_exists(tag), "run b has not finished and uses the same image"
        assert p.code_dir(b).exists()

        await p.runs.transition(b, State.BUILT, State.WITHDRAWN, "Withdrawn by its author.")
        await p.finish(b)
        assert not p.code_dir(b).exists()
        assert not image_exists(tag), "the last run using the image finished: the image is gone"
        await p.finish(b)  # again: nothing left to do, nothing raised
        await p.cleanup_run(await p.load(a))
    finally:
        if tag:
            subprocess.run(["podman", "rmi", "--ignore", tag], capture_output=True)


async def test_a_failing_image_removal_is_logged_and_the_janitor_finishes_the_job(tmp_path, caplog):
    calls = []

    async def broken(tag):
        calls.append(tag)
        raise RuntimeError("podman is having a bad day")

    p = make_pipeline(tmp_path, remove_image=broken)
    run_id = await add_run(p, State.REJECTED, image="localhost/kinetic-analysis:abc")
    write_project(p, run_id, "cat(1)\n")
    await p.finish(run_id)  # does not raise
    assert calls == ["localhost/kinetic-analysis:abc"]
    assert p.code_dir(run_id).exists(), "kept so that the janitor knows the clean-up is unfinished"
    assert "removing the code folder or image failed" in caplog.text

    async def working(tag):
        calls.append(tag)
        return True

    p.remove_image = working
    done = await p.prune()
    assert done["cleaned"] == [run_id] and not p.code_dir(run_id).exists()
    assert len(calls) == 2
    assert (await p.prune())["cleaned"] == []  # nothing left: no second removal
    assert len(calls) == 2


async def test_prune_deletes_old_archives_and_outputs_keeps_young_ones_and_the_audit_trail(tmp_path):
    p = make_pipeline(tmp_path)  # retention 30 days (the default)
    old = await finished_run(p, State.REJECTED, ended=NOW - 31 * DAY)
    old_failed = await finished_run(p, State.FAILED_OUTPUTS_CHECKED, ended=NOW - 45 * DAY)
    young = await finished_run(p, State.REJECTED, ended=NOW - 29 * DAY)
    waiting = await add_run(p, State.IN_REVIEW)  # not finished: never touched, whatever its age
    p.output_dir(waiting).mkdir(parents=True)
    p.archive_path(waiting).write_bytes(b"x")
    await p.db.run(lambda s: setattr(s.get(Run, waiting), "created", NOW - 400 * DAY))

    done = await p.prune(now=NOW)
    assert sorted(done["pruned"]) == sorted([old, old_failed])
    for run_id in (old, old_failed):
        assert not p.run_dir(run_id).exists(), "archive and outputs deleted, the empty folder too"
        assert await events(p, run_id, "retention") == [
            "The archive and outputs were deleted after 30 days (retention)."
        ]
    for run_id in (young, waiting):
        assert p.archive_path(run_id).exists() and p.output_dir(run_id).is_dir()
        assert await events(p, run_id, "retention") == []
    # the audit trail stays: rows, earlier events
    assert (await p.load(old)).state == "rejected"
    assert "Reached rejected." in await events(p, old)
    assert await p.db.run(lambda s: s.query(Run).count()) == 4

    again = await p.prune(now=NOW)  # idempotent: no second event
    assert again["pruned"] == [] and len(await events(p, old, "retention")) == 1
    later = await p.prune(now=NOW + 2 * DAY)  # the young run's turn
    assert later["pruned"] == [young] and not p.archive_path(young).exists()


async def test_a_release_zip_stays_until_the_release_retention_then_goes_too(tmp_path):
    p = make_pipeline(tmp_path, retention_days=30, release_retention_days=90)
    run_id = await finished_run(p, State.RELEASED, ended=NOW, released=NOW)

    await p.prune(now=NOW + 31 * DAY)
    assert not p.archive_path(run_id).exists() and not p.output_dir(run_id).exists()
    assert p.release_path(run_id).exists(), "still downloadable for 90 days"

    await p.prune(now=NOW + 89 * DAY)
    assert p.release_path(run_id).exists()
    done = await p.prune(now=NOW + 91 * DAY)
    assert done["releases"] == [run_id] and not p.run_dir(run_id).exists()
    assert await events(p, run_id, "release_deleted") == [
        "The released outputs (zip) were deleted after 90 days (retention); they can no longer be downloaded."
    ]
    rel = await p.db.run(lambda s: s.get(Release, run_id))
    assert rel is not None and rel.sha256, "the release's record and manifest stay"


async def test_a_download_after_the_zip_was_pruned_answers_410(tmp_path):
    p = make_pipeline(tmp_path, release_retention_days=90)
    run_id = await finished_run(p, State.RELEASED, ended=NOW, released=NOW)
    await p.db.run(lambda s: setattr(s.get(Run, run_id), "author", "ada"))

    class Download(DownloadHandler):  # identity as the hub and Kinetic would give it
        async def prepare(self):
            pass

        async def caller(self):
            return Caller(name="ada", kind="user", sso="cookie")

        async def analysis_for(self, caller, analysis_id):
            return {"id": analysis_id}

    service = SimpleNamespace(
        db=p.db, pipeline=p, kinetic=object(), config=SimpleNamespace(reviewers_group="reviewers")
    )
    port = free_port()
    server = HTTPServer(Application([(r"/api/runs/([^/]+)/download", Download)], enclave=service))
    server.listen(port, "127.0.0.1")
    url = f"http://127.0.0.1:{port}/api/runs/{run_id}/download"
    try:
        ok = await AsyncHTTPClient().fetch(url, raise_error=False)
        assert ok.code == 200 and ok.body == b"PK release zip"

        await p.prune(now=NOW + 91 * DAY)
        gone = await AsyncHTTPClient().fetch(url, raise_error=False)
        assert gone.code == 410
        message = json.loads(gone.body)["message"]
        assert "deleted after 90 days (retention)" in message and "can no longer be downloaded" in message
    finally:
        server.stop()
    downloads = await p.db.run(lambda s: s.query(dbm.Download).filter_by(run_id=run_id).count())
    assert downloads == 1, "only the download that happened is recorded"
    run = await p.load(run_id)
    evs = [
        {"kind": k, "actor": "system", "message": ""}
        for k in await p.db.run(lambda s: [e.kind for e in s.query(Event).filter_by(run_id=run_id)])
    ]
    detail = run_detail(run, evs, [], "author", Caller(name="ada", kind="user"), False)
    assert detail["downloadable"] is False, "the run page no longer offers the link"


async def test_the_janitor_prunes_at_once_and_keeps_going_after_an_error(tmp_path):
    p = make_pipeline(tmp_path)
    rounds = []

    async def flaky(now=None):
        rounds.append(time.monotonic())
        if len(rounds) == 1:
            raise OSError("disk hiccup")
        return {}

    p.prune = flaky
    task = p.start_janitor(0.05)
    await asyncio.sleep(0.01)
    assert len(rounds) == 1, "the first round runs at start-up"
    deadline = time.monotonic() + 5
    while len(rounds) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(rounds) >= 3 and not task.done()
    await p.stop()
    assert task.cancelled()


def test_retention_settings_come_from_the_service_config(tmp_path):
    assert EnclaveService().retention_days == 30
    assert EnclaveService().release_retention_days == 90
    assert EnclaveService().prune_interval_seconds == 3600
    cfg = tmp_path / "enclave.json"
    cfg.write_text(
        json.dumps(
            {
                "EnclaveService": {
                    "retention_days": 7,
                    "release_retention_days": 14,
                    "prune_interval_seconds": 600,
                }
            }
        )
    )
    svc = EnclaveService()
    svc.initialize([f"--config={cfg}"])
    assert (svc.retention_days, svc.release_retention_days, svc.prune_interval_seconds) == (7, 14, 600)
