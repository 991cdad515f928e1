"""The enclave pipeline end to end, through the hub's proxy, with the real stand-in, podman runner,
R image and SMTP sink: submit → checks → run → review (twice, blinded) → release → mail → download."""

import io
import json
import re
import zipfile

from enclave_service.archive import create_archive
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE, MARIE, ROSALIND

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import GOOD_MAIN, make_home, wait_for_state


async def _archive(tmp_path, name, main_r):
    home = make_home(tmp_path / name, main_r)
    return (await create_archive(home, tmp_path / f"{name}.tar.zst")).path


def kinetic_calls(standin, kinetic_run_id):
    data = standin.records()
    run = next(r for r in data["runs"] if str(r["id"]) == str(kinetic_run_id))
    key = run["api_key"]
    logs = [r["body"] for r in data["records"] if r["endpoint"] == "log" and r["body"]["api_key"] == key]
    done = [
        r["body"] for r in data["records"] if r["endpoint"] == "completion" and r["body"]["api_key"] == key
    ]
    uploads = [
        r["body"]
        for r in data["records"]
        if r["endpoint"] == "upload_results" and r["body"]["api_key"] == key
    ]
    return logs, done, uploads


async def test_happy_path_two_blinded_approvals_release_mail_download(enclave_hub, standin, tmp_path):
    hub = enclave_hub
    archive = await _archive(tmp_path, "good", GOOD_MAIN.format(extra=""))
    r = hub.submit_archive(ADA, 101, archive, message="quiz scores by course")
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    assert r.json()["state"] == "submitted"

    run = wait_for_state(
        hub,
        ADA,
        run_id,
        {"in_review"}
        | {f"failed_{s}" for s in ("archived", "code_checked", "built", "ran", "outputs_checked")},
    )
    assert run["state"] == "in_review", (run["failure"], run.get("events"))
    assert run["code_report"]["verdict"] in ("pass", "review")
    assert "summary.csv" in run["output_report"]["manifest"]
    states = [e["state"] for e in run["events"] if e["kind"] == "state"]
    assert states == ["submitted", "archived", "code_checked", "built", "ran", "outputs_checked", "in_review"]
    assert run["logs"] is None  # real-data logs go to reviewers only
    assert run["downloadable"] is False
    assert hub.call(ADA, "GET", f"api/runs/{run_id}/download").status_code == 409

    # the researcher's list, the co-researcher's view, the reviewers' queue
    assert run_id in [x["id"] for x in hub.call(ADA, "GET", "api/runs").json()["runs"]]
    assert hub.call(GRACE, "GET", f"api/runs/{run_id}").json()["role"] == "researcher"
    assert hub.call(KATHERINE, "GET", f"api/runs/{run_id}").status_code == 404
    queue = hub.call(ROSALIND, "GET", "api/runs").json()["queue"]
    assert run_id in [x["id"] for x in queue]

    # the author (and co-researcher) cannot review; nor can a non-reviewer
    assert hub.call(ADA, "POST", f"api/runs/{run_id}/review", json={"decision": "approve"}).status_code == 403
    assert (
        hub.call(GRACE, "POST", f"api/runs/{run_id}/review", json={"decision": "approve"}).status_code == 403
    )
    # a rejection needs a comment
    r = hub.call(ROSALIND, "POST", f"api/runs/{run_id}/review", json={"decision": "reject"})
    assert r.status_code == 400 and "comment" in r.json()["message"]

    r = hub.call(
        ROSALIND,
        "POST",
        f"api/runs/{run_id}/review",
        json={"decision": "approve", "comment": "aggregates only; fine <b>bold</b>"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "in_review"
    # the same reviewer cannot approve twice
    r = hub.call(ROSALIND, "POST", f"api/runs/{run_id}/review", json={"decision": "approve"})
    assert r.status_code == 409

    # blinded: MARIE sees that one decision is in, not what it was; ROSALIND sees her own only
    seen = hub.call(MARIE, "GET", f"api/runs/{run_id}").json()
    assert seen["review"]["blinded"] and seen["review"]["received"] == 1
    assert seen["review"]["reviews"] == [] and seen["review"]["mine"] is None
    assert "aggregates only" not in json.dumps(seen)
    assert ROSALIND not in json.dumps(seen["events"])
    mine = hub.call(ROSALIND, "GET", f"api/runs/{run_id}").json()["review"]
    assert [x["reviewer"] for x in mine["reviews"]] == [ROSALIND]
    # the author does not see the decision either until the run is decided
    assert hub.call(ADA, "GET", f"api/runs/{run_id}").json()["review"]["reviews"] == []

    r = hub.call(MARIE, "POST", f"api/runs/{run_id}/review", json={"decision": "approve", "comment": ""})
    assert r.status_code == 200, r.text
    run = wait_for_state(hub, ADA, run_id, {"released", "failed_released"}, timeout=60)
    assert run["state"] == "released", run["failure"]
    assert run["review"]["blinded"] is False and len(run["review"]["reviews"]) == 2

    # download: released, hub login, audited; the zip carries a manifest with each file's sha256
    assert hub.call(None, "GET", f"api/runs/{run_id}/download").status_code == 403
    assert hub.call(ROSALIND, "GET", f"api/runs/{run_id}/download").status_code == 403
    r = hub.call(ADA, "GET", f"api/runs/{run_id}/download")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert "no-store" in r.headers.get("Cache-Control", "")
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    manifest = json.loads(zf.read("MANIFEST.json"))
    import hashlib

    body = zf.read("output/summary.csv")
    assert manifest["files"]["output/summary.csv"] == hashlib.sha256(body).hexdigest()
    assert b"student_id" not in body
    # computed from the REAL data the service staged (the archive's synthetic file has one row,
    # one course); the staged data is gone once the run is over
    assert body.count(b"\n") == 4 and b"physics" in body and b"statistics" in body
    assert not (hub.enclave_state / "runs" / run_id / "data").exists()
    r = hub.call(GRACE, "GET", f"api/runs/{run_id}/download")
    assert r.status_code == 200
    downloads = hub.db_rows("select user from downloads where run_id = ? order by id", run_id)
    assert downloads == [(ADA,), (GRACE,)]
    events = hub.call(ADA, "GET", f"api/runs/{run_id}").json()["events"]
    assert [e["actor"] for e in events if e["kind"] == "download"] == [ADA, GRACE]

    # the mail: to the researcher, a link to the run's page, no token of any kind
    mails = wait_mail(hub, run_id)
    assert "ada.lovelace@example.org" in mails[0]
    assert f"{hub.url}/services/enclave/runs/{run_id}" in mails[0]
    assert "token" not in mails[0].lower() and "download" not in re.findall(r"https?://\S+", mails[0])[0]

    # Kinetic: a run, log lines in its stages and levels, the upload, completion = success (W8, W9)
    logs, done, uploads = kinetic_calls(standin, run["kinetic"]["run_id"])
    assert {x["stage"] for x in logs} >= {"archive", "review", "package", "run", "check", "end"}
    assert {x["level"] for x in logs} <= {"info", "error", "debug"}
    assert [d["status"] for d in done] == ["success"]
    assert len(uploads) == 1 and done[0]["output_signed_id"] == uploads[0]["signed_id"]


def wait_mail(hub, run_id, timeout=30):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mails = [m for m in hub.mails() if run_id in m]
        if mails:
            return mails
        time.sleep(0.3)
    raise AssertionError("no mail arrived for run " + run_id)


async def test_script_that_exits_1_fails_and_kinetic_hears_failure(enclave_hub, standin, tmp_path):
    hub = enclave_hub
    archive = await _archive(tmp_path, "bad", 'cat("about to fail\\n")\nquit(status = 1)\n')
    run_id = hub.submit_archive(ADA, 102, archive, message="this one fails").json()["id"]
    run = wait_for_state(hub, ADA, run_id, {"failed_ran", "in_review", "failed_code_checked", "failed_built"})
    assert run["state"] == "failed_ran"
    assert "exited with code 1" in run["failure"]
    assert "Failed" in run["state_message"]
    logs, done, _ = wait_completion(standin, run, hub, ADA)
    assert [d["status"] for d in done] == ["failure"]
    assert any(x["level"] == "error" and x["stage"] == "run" for x in logs)


def wait_completion(standin, run, hub, uuid, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = hub.call(uuid, "GET", f"api/runs/{run['id']}").json()
        if run["kinetic"]["run_id"]:
            logs, done, uploads = kinetic_calls(standin, run["kinetic"]["run_id"])
            if done:
                return logs, done, uploads
        time.sleep(0.3)
    raise AssertionError("Kinetic never heard a completion")


async def test_code_check_failure_stops_the_run_with_the_report(enclave_hub, standin, tmp_path):
    hub = enclave_hub
    archive = await _archive(tmp_path, "sys", 'x <- system("ls", intern = TRUE)\nprint(x)\n')
    run_id = hub.submit_archive(GRACE, 103, archive, message="shell out").json()["id"]
    run = wait_for_state(hub, GRACE, run_id, {"failed_code_checked", "in_review", "failed_ran"}, timeout=90)
    assert run["state"] == "failed_code_checked"
    assert run["code_report"]["verdict"] == "fail"
    assert any("system" in json.dumps(f) for f in run["code_report"]["findings"])
    assert [e["state"] for e in run["events"] if e["kind"] == "state"] == [
        "submitted",
        "archived",
        "failed_code_checked",
    ]
    _, done, _ = wait_completion(standin, run, hub, GRACE)
    assert [d["status"] for d in done] == ["failure"]


async def test_json_submit_snapshots_the_workspace(enclave_hub, tmp_path):
    """Local backend: {analysis_id, message} makes the service archive <workspaces_root>/<id>."""
    hub = enclave_hub
    make_home(hub.workspaces / "103", GOOD_MAIN.format(extra=""))
    r = hub.call(GRACE, "POST", "api/runs", json={"analysis_id": "103", "message": "from my workspace"})
    assert r.status_code == 201, r.text
    run = wait_for_state(
        hub,
        GRACE,
        r.json()["id"],
        {"in_review", "failed_built", "failed_ran", "failed_code_checked", "failed_outputs_checked"},
    )
    assert run["state"] == "in_review", run["failure"]
    assert run["archive_sha256"]
    # no workspace for that analysis: a clear 404, no run
    r = hub.call(KATHERINE, "POST", "api/runs", json={"analysis_id": "104", "message": "x"})
    assert r.status_code == 404 and "workspace" in r.json()["message"]
