"""Metrics an operator can scrape: the enclave's at ``/services/enclave/metrics`` and the hub's own at
``/hub/metrics``, both behind hub auth (``read:metrics``), both read through the hub's proxy. One
scrape token (a token-only service from ``add_metrics_reader``) reads both; researchers,
reviewers and anonymous callers are refused."""

import time

import requests

from enclave_service.archive import create_archive
from enclave_service.states import State
from kinetic_auth.standin import seed
from kinetic_auth.standin.seed import ADA, GRACE, ROSALIND

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import GOOD_MAIN, approve_twice, make_home, wait_for_state
from .service_fixtures import metric_samples as samples
from .service_fixtures import metric_value as value

STEPS = ("archive", "code", "build", "run", "outputs", "review", "release")


async def test_an_operator_reads_the_enclave_metrics_after_runs_go_through(enclave_hub, tmp_path):
    hub = enclave_hub
    before = samples(hub.metrics())
    assert {s.value for s in State} == {dict(k[1])["state"] for k in before if k[0] == "enclave_runs"}

    home = make_home(tmp_path / "good", GOOD_MAIN.format(extra=""))
    archive = await create_archive(home, tmp_path / "good.tar.zst")
    r = hub.submit_archive(ADA, 101, archive.path, message="metrics")
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    run = wait_for_state(
        hub,
        ADA,
        run_id,
        {
            "in_review",
            "failed_archived",
            "failed_code_checked",
            "failed_built",
            "failed_ran",
            "failed_outputs_checked",
        },
    )
    assert run["state"] == "in_review", run["failure"]
    time.sleep(1.1)  # the database part is re-read at most once a second
    waiting = samples(hub.metrics())
    assert value(waiting, "enclave_runs", state="in_review") >= 1
    assert value(waiting, "enclave_queue_age_seconds", state="in_review") > 0  # the reviewers' queue

    # a run the code checks refuse: a failure counted against its step
    bad = make_home(tmp_path / "bad", 'x <- system("ls", intern = TRUE)\nprint(x)\n')
    r = hub.submit_archive(GRACE, 101, (await create_archive(bad, tmp_path / "bad.tar.zst")).path)
    assert r.status_code == 201, r.text
    assert (
        wait_for_state(
            hub, GRACE, r.json()["id"], {"failed_code_checked", "in_review", "failed_ran"}, timeout=90
        )["state"]
        == "failed_code_checked"
    )

    assert approve_twice(hub, run_id, ADA)["state"] == "released"
    time.sleep(1.1)
    after = samples(hub.metrics())
    assert (
        value(after, "enclave_runs", state="released") == value(before, "enclave_runs", state="released") + 1
    )
    assert (
        value(after, "enclave_runs", state="failed_code_checked")
        == value(before, "enclave_runs", state="failed_code_checked") + 1
    )
    for step in STEPS:  # each step of the released run was timed, as a success
        grew = value(after, "enclave_step_duration_seconds_count", step=step, outcome="ok") - value(
            before, "enclave_step_duration_seconds_count", step=step, outcome="ok"
        )
        assert grew >= 1, step
    assert value(after, "enclave_step_duration_seconds_sum", step="run", outcome="ok") > 0
    assert (
        value(after, "enclave_step_failures_total", step="code")
        == value(before, "enclave_step_failures_total", step="code") + 1
    )
    assert value(after, "enclave_step_duration_seconds_count", step="code", outcome="failed") >= 1
    assert value(after, "enclave_archive_bytes_count") == value(before, "enclave_archive_bytes_count") + 2
    assert (
        value(after, "enclave_archive_bytes_sum") - value(before, "enclave_archive_bytes_sum")
        >= archive.bytes
    )
    assert value(after, "enclave_process_resident_memory_bytes") > 0
    assert time.time() - value(after, "enclave_metrics_read_timestamp_seconds") < 60


def test_researchers_reviewers_and_strangers_are_refused_the_metrics(enclave_hub):
    hub = enclave_hub
    for who in (ADA, ROSALIND):  # a researcher, a reviewer: access to the service, not metrics
        r = hub.metrics(hub.user(who))
        assert r.status_code == 403, (who, r.status_code)
        assert "read:metrics" in r.json()["message"]
        assert "enclave_runs" not in r.text
    assert hub.metrics("").status_code == 403  # anonymous
    assert hub.metrics("not-a-real-token").status_code == 403


def test_the_scrape_token_reads_the_hubs_own_metrics_too(enclave_hub):
    hub = enclave_hub
    m = samples(
        requests.get(
            f"{hub.url}/hub/metrics", timeout=30, headers={"Authorization": f"Bearer {hub.metrics_token}"}
        )
    )
    assert any(name.startswith("jupyterhub_") for name, _ in m)
    assert requests.get(f"{hub.url}/hub/metrics", timeout=30).status_code == 403
    r = requests.get(
        f"{hub.url}/hub/metrics", timeout=30, headers={"Authorization": f"token {hub.user(ADA)}"}
    )
    assert r.status_code == 403


def test_the_kit_hub_serves_both_metrics_to_an_admin_token(hub):
    """The hub of hub_config/jupyterhub_config.py as it stands: its admins hold read:metrics, so a
    token an admin makes with just the two scopes reads both endpoints; a researcher's does not."""
    admin = seed.ADMINS[0]
    r = hub.api(
        "POST",
        f"/users/{admin}/tokens",
        json={
            "note": "prometheus",
            "expires_in": 600,
            "scopes": ["read:metrics", "access:services!service=enclave"],
        },
    )
    assert r.status_code in (200, 201), r.text
    token = r.json()["token"]
    auth = {"Authorization": f"token {token}"}
    m = samples(requests.get(f"{hub.url}/hub/metrics", headers=auth, timeout=30))
    assert value(m, "jupyterhub_total_users") >= 1
    deadline = time.monotonic() + 30  # the enclave is a managed service: it may still start
    while True:
        r = requests.get(f"{hub.url}/services/enclave/metrics", headers=auth, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "enclave_runs" in {name for name, _ in samples(r)}
    assert requests.get(f"{hub.url}/hub/metrics", timeout=30).status_code == 403
    assert requests.get(f"{hub.url}/services/enclave/metrics", timeout=30).status_code == 403
