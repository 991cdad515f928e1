"""Who may call the enclave service: the hub identifies, Kinetic authorizes (W1)."""

from enclave_service.archive import create_archive
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE, ROSALIND

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import GOOD_MAIN, make_home


def test_anonymous_calls_are_refused(enclave_hub):
    for method, path in (
        ("GET", "api/runs"),
        ("POST", "api/runs"),
        ("GET", "api/runs/abc"),
        ("POST", "api/runs/abc/review"),
        ("GET", "api/runs/abc/download"),
    ):
        r = enclave_hub.call(None, method, path)
        assert r.status_code == 403, (method, path, r.status_code)
    r = enclave_hub.call(None, "GET", "api/runs", headers={"Authorization": "token not-a-real-token"})
    assert r.status_code == 403


async def test_w1_researcher_not_on_the_analysis_cannot_submit(enclave_hub, tmp_path):
    home = make_home(tmp_path / "home", GOOD_MAIN.format(extra=""))
    info = await create_archive(home, tmp_path / "a.tar.zst")
    before = enclave_hub.db_rows("select count(*) from runs")[0][0]
    # KATHERINE is on 104 only; 101 is ADA's and GRACE's
    r = enclave_hub.submit_archive(KATHERINE, 101, info.path)
    assert r.status_code == 404, r.text
    assert "not one of its researchers" in r.json()["message"]
    # JSON submit (the service snapshots the workspace) is authorized the same way
    r = enclave_hub.call(KATHERINE, "POST", "api/runs", json={"analysis_id": "102", "message": "x"})
    assert r.status_code == 404
    # an analysis that does not exist looks the same
    r = enclave_hub.submit_archive(KATHERINE, 999, info.path)
    assert r.status_code == 404
    # bad input: a clear 400, nothing stored
    r = enclave_hub.call(ADA, "POST", "api/runs", json={"analysis_id": "../101", "message": "x"})
    assert r.status_code == 400
    assert enclave_hub.db_rows("select count(*) from runs")[0][0] == before
    assert (
        not [p for p in (enclave_hub.enclave_state / "runs").iterdir()]
        or len(list((enclave_hub.enclave_state / "runs").iterdir())) == before
    )
    # a reviewer sees no run of others in "their runs", and a stranger cannot read a run id
    assert enclave_hub.call(ROSALIND, "GET", "api/runs").json()["runs"] == []
    assert enclave_hub.call(GRACE, "GET", "api/runs/000000000000").status_code == 404
