"""Pieces of the enclave service without a hub: step time limits, transitions that lose a race,
review rules under concurrency, the release zip, the mail text, the hub configuration."""

import asyncio
import hashlib
import json
import zipfile

import pytest
from traitlets.config import Config

from enclave_service import db as dbm
from enclave_service.db import Database, Run, RunRecord
from enclave_service.hub_integration import configure_enclave_service
from enclave_service.kinetic_sync import KineticSync
from enclave_service.mail import decision_mail
from enclave_service.pipeline import Pipeline
from enclave_service.release import build_zip
from enclave_service.states import WITHDRAWABLE, RunError, State, StepFailed


def make_pipeline(tmp_path, **kw):
    db = Database(f"sqlite:///{tmp_path / 'e.sqlite'}")
    return Pipeline(
        db=db,
        runs_dir=tmp_path / "runs",
        kinetic=KineticSync(None),
        runner=None,
        mailer=None,
        public_url="http://hub.example",
        **kw,
    )


async def add_run(p, state=State.SUBMITTED, **fields):
    def tx(s):
        run = Run(analysis_id="101", author="ada", state=state.value, **fields)
        s.add(run)
        s.flush()
        return run.id

    return await p.db.run(tx)


async def test_a_step_over_its_time_limit_fails_in_plain_words(tmp_path):
    p = make_pipeline(tmp_path, limits={"archive": 0.2})

    async def slow(run):
        await asyncio.sleep(5)

    p.step_archive = slow
    run_id = await add_run(p)
    await p.drive(run_id)
    run = await p.load(run_id)
    assert run.state == "failed_archived"
    assert run.failure == "Unpacking the code archive took longer than the limit of 0.2 s."


async def test_a_failed_step_records_its_reason_and_stops(tmp_path):
    p = make_pipeline(tmp_path)

    async def refuse(run):
        raise StepFailed("The code archive was refused: archive/../x escapes the folder")

    p.step_archive = refuse
    run_id = await add_run(p)
    await p.drive(run_id)
    run = await p.load(run_id)
    assert run.state == "failed_archived" and "escapes" in run.failure
    assert run.state.message.startswith("Failed:")


async def test_transition_loses_to_a_withdrawal(tmp_path):
    p = make_pipeline(tmp_path)
    run_id = await add_run(p, State.BUILT)
    assert await p.runs.transition(run_id, WITHDRAWABLE, State.WITHDRAWN, "Withdrawn by its author.")
    assert not await p.runs.transition(run_id, State.BUILT, State.RAN, "finished")
    assert (await p.load(run_id)).state == "withdrawn"


async def test_resume_drives_every_pipeline_state_and_leaves_people_states(tmp_path):
    p = make_pipeline(tmp_path)
    ids = {s: await add_run(p, s) for s in (State.ARCHIVED, State.IN_REVIEW, State.RELEASED, State.APPROVED)}
    seen = []

    async def fake_drive(run_id):
        seen.append(run_id)

    p.drive = fake_drive
    await p.resume_all()
    await asyncio.sleep(0)
    assert sorted(seen) == sorted([ids[State.ARCHIVED], ids[State.APPROVED]])


async def test_review_rules_and_concurrent_approvals(tmp_path):
    p = make_pipeline(tmp_path)
    p.kick = lambda run_id: None  # the release step is not under test here
    run_id = await add_run(p, State.IN_REVIEW, collaborators=["ada", "grace"], required_approvals=2)
    with pytest.raises(RunError) as e:
        await p.runs.review(run_id, "grace", True, "approve", "")
    assert e.value.status == 403
    with pytest.raises(RunError) as e:
        await p.runs.review(run_id, "rosalind", True, "maybe", "")
    assert e.value.status == 400
    with pytest.raises(RunError) as e:
        await p.runs.review(run_id, "katherine", False, "approve", "")
    assert e.value.status == 403
    results = await asyncio.gather(
        *(p.runs.review(run_id, r, True, "approve", "") for r in ("rosalind", "marie", "dorothy")),
        return_exceptions=True,
    )
    assert results[:2] == [State.IN_REVIEW, State.APPROVED]
    assert isinstance(results[2], RunError) and results[2].status == 409  # already decided
    approved = await p.db.run(lambda s: s.query(dbm.Event).filter_by(run_id=run_id, state="approved").count())
    assert approved == 1
    # one rejection decides: rejected
    other = await add_run(p, State.IN_REVIEW, required_approvals=1)
    p.finish_soon = lambda run_id: None
    assert (
        await p.runs.review(other, "marie", True, "reject", "row-level data in table.csv") == State.REJECTED
    )


def test_release_zip_is_deterministic_and_refuses_a_changed_file(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.csv").write_text("x\n1\n")
    (out / "sub" / "b.txt").write_text("hello")
    manifest = {rel: hashlib.sha256((out / rel).read_bytes()).hexdigest() for rel in ("a.csv", "sub/b.txt")}
    sha1, _ = build_zip(out, manifest, tmp_path / "r1.zip")
    sha2, _ = build_zip(out, manifest, tmp_path / "r2.zip")
    assert sha1 == sha2
    with zipfile.ZipFile(tmp_path / "r1.zip") as zf:
        assert sorted(zf.namelist()) == ["MANIFEST.json", "output/a.csv", "output/sub/b.txt"]
        assert json.loads(zf.read("MANIFEST.json"))["files"]["output/a.csv"] == manifest["a.csv"]
    (out / "a.csv").write_text("x\n2\n")
    with pytest.raises(StepFailed):
        build_zip(out, manifest, tmp_path / "r3.zip")
    assert not (tmp_path / "r3.zip").exists()


def test_mail_carries_the_run_page_link_only():
    run = RunRecord(**{f: "" for f in RunRecord.__dataclass_fields__})
    run.id, run.analysis_id, run.analysis_title, run.message, run.state = (
        "abc123",
        "101",
        "T",
        "m",
        State.RELEASED,
    )
    subject, body = decision_mail(run, "https://hub.example/services/enclave/runs/abc123")
    assert "abc123" in subject
    assert "https://hub.example/services/enclave/runs/abc123" in body
    assert "token" not in body.lower() and "/download" not in body


def test_configure_enclave_service_registers_service_roles_and_group(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "other", "api_token": "x"}]
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "access:services!service=other"]}]
    configure_enclave_service(
        c,
        state_dir=tmp_path,
        kinetic_url="http://k",
        public_url="http://hub/",
        reviewers=["r1", "r2"],
        smtp_port=2525,
        enclave_key_file=tmp_path / "key",
    )
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["other", "enclave"]
    svc = c.JupyterHub.services[1]
    assert svc["command"][2] == "enclave_service.app" and svc["oauth_no_confirm"]
    # one path: every setting is in the service's config file, none in its environment
    assert svc["command"][3] == f"--config={tmp_path / 'enclave_service_config.json'}"
    assert set(svc["environment"]) == {"PYTHONPATH"}
    written = json.loads((tmp_path / "enclave_service_config.json").read_text())["EnclaveService"]
    assert written["enclave_key_file"].endswith("key") and written["smtp_port"] == 2525
    assert (tmp_path / "enclave_service_config.json").stat().st_mode & 0o077 == 0
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(roles["enclave-service"]["scopes"]) == {
        "list:users",
        "read:users",
        "admin:auth_state",
        "read:groups",
    }
    assert roles["enclave-service"]["services"] == ["enclave"]
    assert "access:services!service=enclave" in roles["user"]["scopes"]
    assert "access:services!service=other" in roles["user"]["scopes"]
    assert c.JupyterHub.load_groups["reviewers"]["users"] == ["r1", "r2"]
