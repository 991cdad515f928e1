"""Runs survive the service: SIGKILL it mid-run, the hub starts it again, the run finishes.
And the author (only the author) can withdraw a running run, which stops its container."""

import subprocess
import time

from enclave_service.archive import create_archive
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import make_home, wait_for_state

SLOW_MAIN = """cutoff_date = "2026-01-15"
d <- read.csv("data/responses.csv")
Sys.sleep(10)
write.csv(aggregate(quiz_score ~ course, data = d, FUN = mean), "output/slow.csv", row.names = FALSE)
"""


def container_exists(run_id):
    return subprocess.run(["podman", "container", "exists", f"kinetic-run-{run_id}"]).returncode == 0


async def _slow_archive(tmp_path):
    home = make_home(tmp_path / "home", SLOW_MAIN)
    return (await create_archive(home, tmp_path / "slow.tar.zst")).path


async def test_killing_the_service_mid_run_then_restarting_finishes_the_run(enclave_hub, tmp_path):
    hub = enclave_hub
    archive = await _slow_archive(tmp_path)
    run_id = hub.submit_archive(ADA, 101, archive, message="slow").json()["id"]
    wait_for_state(hub, ADA, run_id, "built", timeout=180)
    deadline = time.monotonic() + 30
    while not container_exists(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    old = hub.kill_service()
    # the hub notices and starts the service again; it resumes the run from the database
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if hub.service_pid() != old:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    assert hub.service_pid() != old
    hub.wait_service()
    run = wait_for_state(hub, ADA, run_id, {"in_review", "failed_ran", "failed_outputs_checked"}, timeout=120)
    assert run["state"] == "in_review", run["failure"]
    states = [e["state"] for e in run["events"] if e["kind"] == "state"]
    assert states.count("ran") == 1 and states[-1] == "in_review"
    assert "slow.csv" in run["output_report"]["manifest"]
    assert not container_exists(run_id)


async def test_only_the_author_can_withdraw(enclave_hub, standin, tmp_path):
    hub = enclave_hub
    archive = await _slow_archive(tmp_path)
    run_id = hub.submit_archive(ADA, 101, archive, message="to withdraw").json()["id"]
    wait_for_state(hub, ADA, run_id, "built", timeout=180)
    assert hub.call(GRACE, "POST", f"api/runs/{run_id}/withdraw").status_code == 403  # co-researcher
    assert hub.call(KATHERINE, "POST", f"api/runs/{run_id}/withdraw").status_code == 404
    r = hub.call(ADA, "POST", f"api/runs/{run_id}/withdraw")
    assert r.status_code == 200, r.text
    run = hub.call(ADA, "GET", f"api/runs/{run_id}").json()
    assert run["state"] == "withdrawn"
    time.sleep(3)  # the step the pipeline was in does not overwrite the withdrawal
    assert hub.call(ADA, "GET", f"api/runs/{run_id}").json()["state"] == "withdrawn"
    assert not container_exists(run_id)
    assert hub.call(ADA, "POST", f"api/runs/{run_id}/withdraw").status_code == 409
    from .test_service_pipeline import wait_completion

    _, done, _ = wait_completion(standin, run, hub, ADA)
    assert [d["status"] for d in done] == ["failure"]
