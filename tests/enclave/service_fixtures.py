"""Fixtures for the enclave service tests: a REAL JupyterHub (subprocess, with the proxy from
node_modules) whose managed service ``enclave`` is registered by ``configure_enclave_service``,
the Kinetic stand-in, a real SMTP sink, and researchers signed in to the stand-in.

Import into a test module with ``from .service_fixtures import *``. The hub is shared by every
module that uses it (one per session), because starting it and building images costs seconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import requests

from kinetic_auth.keys import ensure_standin_keys
from kinetic_auth.standin import seed
from tests.support import ROOT, child_env, free_port, start_process, stop_process, wait_for_http

__all__ = [
    "enclave_hub",
    "EnclaveHub",
    "make_home",
    "GOOD_MAIN",
    "wait_for_state",
    "approve_twice",
    "metric_samples",
    "metric_value",
]

GOOD_MAIN = """# reading time and quiz scores, by course
cutoff_date = "2026-01-15"
d <- read.csv("data/responses.csv")
agg <- aggregate(cbind(quiz_score, minutes_reading) ~ course, data = d, FUN = mean)
agg$students <- as.vector(table(d$course)[agg$course])
write.csv(agg, "output/summary.csv", row.names = FALSE)
{extra}
"""


def make_home(root: Path, main_r: str) -> Path:
    """A workspace home as the researcher would have it: ~/kinetic/main.r and synthetic data."""
    project = root / "kinetic"
    (project / "data").mkdir(parents=True, exist_ok=True)
    (project / "output").mkdir(exist_ok=True)
    (project / "main.r").write_text(main_r)
    (project / "data" / "responses.csv").write_text(
        "student_id,course,week,minutes_reading,quiz_score\nsynthetic-0001,biology,1,10,50\n"
    )
    return root


HUB_CONFIG = """
import json, sys
sys.path.insert(0, {root!r})
from enclave_service.hub_integration import add_metrics_reader, configure_enclave_service
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "jupyterhub.auth.DummyAuthenticator"
c.Authenticator.enable_auth_state = True
c.Authenticator.allow_all = True
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{state}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.pid_file = "{state}/hub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.default_url = "/services/enclave/"   # no single-user servers in these tests
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "test-admin", "services": ["test-admin"],
    "scopes": ["admin:users", "admin:auth_state", "tokens", "admin:groups", "list:users", "read:users"]}}]
configure_enclave_service(c, state_dir={enclave_state!r}, kinetic_url={kinetic_url!r},
    public_url="http://127.0.0.1:{port}", reviewers={reviewers!r}, smtp_port={smtp_port},
    enclave_key_file={key_file!r}, port={service_port}, runner="podman",
    workspaces_root={workspaces!r}, run_wall_seconds=120, db_url={db_url!r},
    step_limits={{"build": 600, "run": 300}})
# what a Prometheus server scrapes with: read:metrics (hub and enclave), nothing else
add_metrics_reader(c, "test-prometheus", {metrics_token!r})
"""


class EnclaveHub:
    def __init__(self, standin, base: Path, mail_dir: Path, smtp_port: int, db_url: str | None = None):
        self.standin = standin
        self.base = base
        self.state = base / "hub"
        self.enclave_state = base / "enclave"
        self.workspaces = base / "workspaces"
        self.mail_dir = mail_dir
        self.smtp_port = smtp_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/hub/api"
        self.service_url = f"{self.url}/services/enclave/"
        self.admin_token = secrets.token_hex(32)
        self.metrics_token = secrets.token_hex(32)  # the test-prometheus service's
        self.db_url = db_url  # the enclave's database (None: SQLite)
        self.tokens: dict[str, str] = {}
        self.proc = None

    # -- process ------------------------------------------------------------------------
    def start(self) -> EnclaveHub:
        for d in (self.state, self.enclave_state, self.workspaces):
            d.mkdir(parents=True, exist_ok=True)
        keys_state = self.standin.state_dir
        ensure_standin_keys(keys_state)
        cfg = HUB_CONFIG.format(
            root=str(ROOT),
            port=self.port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            state=self.state,
            admin_token=self.admin_token,
            enclave_state=str(self.enclave_state),
            kinetic_url=self.standin.url,
            reviewers=list(seed.REVIEWERS),
            smtp_port=self.smtp_port,
            key_file=str(Path(keys_state) / "keys" / "kinetic_enclave_key"),
            service_port=free_port(),
            workspaces=str(self.workspaces),
            db_url=self.db_url,
            metrics_token=self.metrics_token,
        )
        (self.state / "jupyterhub_config.py").write_text(cfg)
        env = child_env(JUPYTERHUB_CRYPT_KEY=secrets.token_hex(32))
        self.env = env
        self._launch()
        return self

    def _launch(self):
        self.proc = start_process(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.state / "jupyterhub_config.py")],
            self.state / "hub.log",
            env=self.env,
            cwd=self.state,
        )
        wait_for_http(self.api, timeout=60, proc=self.proc)
        self.wait_service()

    def wait_service(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = requests.get(self.service_url + "api/runs", timeout=3)
                if r.status_code == 403:  # up, and refusing the anonymous caller
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError("the enclave service did not come up; see " + str(self.state / "hub.log"))

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, timeout=30)

    def service_pid(self) -> int:
        return int((self.enclave_state / "enclave.pid").read_text())

    def kill_service(self) -> int:
        """SIGKILL the enclave service (no clean shutdown); the hub restarts it."""
        pid = self.service_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    # -- hub API ------------------------------------------------------------------------
    def admin(self, method: str, path: str, **kw) -> requests.Response:
        r = requests.request(
            method, self.api + path, headers={"Authorization": f"token {self.admin_token}"}, timeout=15, **kw
        )
        return r

    def user(self, uuid: str) -> str:
        """Create the hub user named by this uuid, sign them in to the stand-in, store auth_state
        as the KineticAuthenticator would, and return a hub API token for them."""
        if uuid in self.tokens:
            return self.tokens[uuid]
        r = self.admin("POST", f"/users/{uuid}")
        assert r.status_code in (201, 409), r.text
        self.set_auth_state(uuid)
        r = self.admin("POST", f"/users/{uuid}/tokens", json={"note": "enclave tests", "expires_in": 7200})
        assert r.status_code in (200, 201), r.text
        self.tokens[uuid] = r.json()["token"]
        return self.tokens[uuid]

    def set_auth_state(self, uuid: str) -> None:
        """What KineticAuthenticator stores at sign-in. (A browser sign-in through the
        DummyAuthenticator clears it, so the page tests call this again after signing in.)"""
        cookie = self.standin.sign_in(requests.Session(), uuid)
        person = next(p for p in seed.RESEARCHERS if p["uuid"] == uuid)
        auth_state = {
            "sso_cookie": cookie,
            "uuid": uuid,
            "profile": {
                "first_name": person["first_name"],
                "last_name": person["last_name"],
                "email": person["email"],
            },
        }
        r = self.admin("PATCH", f"/users/{uuid}", json={"auth_state": auth_state})
        assert r.status_code == 200, r.text

    def call(self, uuid: str | None, method: str, path: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if uuid:
            headers["Authorization"] = f"token {self.user(uuid)}"
        return requests.request(method, self.service_url + path, headers=headers, timeout=60, **kw)

    def submit_archive(self, uuid: str, analysis_id, archive: Path, message: str = "test run"):
        with open(archive, "rb") as f:
            return self.call(
                uuid,
                "POST",
                "api/runs",
                data={"analysis_id": str(analysis_id), "message": message},
                files={"archive": ("archive.tar.zst", f, "application/zstd")},
            )

    def metrics(self, token: str | None = None, path: str = "metrics") -> requests.Response:
        """GET the enclave's metrics through the hub's proxy (default: the scrape token), sending the
        token as Prometheus does (``Authorization: Bearer``)."""
        token = self.metrics_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.service_url + path, headers=headers, timeout=30)

    def db_rows(self, sql: str, *args) -> list[tuple]:
        assert self.db_url is None, "db_rows reads the SQLite database"
        with sqlite3.connect(self.enclave_state / "enclave.sqlite", timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    def mails(self) -> list[str]:
        return [p.read_text() for p in sorted(self.mail_dir.glob("*.eml"))]


def wait_for_state(hub: EnclaveHub, uuid: str, run_id: str, states, timeout: float = 240) -> dict:
    states = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = hub.call(uuid, "GET", f"api/runs/{run_id}")
            if r.status_code == 200:
                last = r.json()
                if last["state"] in states:
                    return last
        except requests.RequestException:
            pass  # the service may be restarting
        time.sleep(0.5)
    raise AssertionError(
        f"run {run_id} did not reach {states}; last seen: {last and last['state']} "
        f"{last and last.get('failure')}"
    )


def approve_twice(hub: EnclaveHub, run_id: str, author: str) -> dict:
    """The two seeded reviewers approve; returns the run once it is released (or failed to be)."""
    for reviewer in seed.REVIEWERS[:2]:
        r = hub.call(
            reviewer, "POST", f"api/runs/{run_id}/review", json={"decision": "approve", "comment": "ok"}
        )
        assert r.status_code == 200, r.text
    return wait_for_state(hub, author, run_id, {"released", "failed_released"}, timeout=60)


def metric_samples(resp: requests.Response) -> dict:
    """{(sample name, ((label, value), …)): value} of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


_shared: dict = {}


@pytest.fixture(scope="session")
def enclave_hub(standin, r_base_image, tmp_path_factory, request):
    """One real hub + enclave service + SMTP sink for every service test of the session."""
    if "hub" not in _shared:
        from enclave_service.mailsink import MailSink

        base = tmp_path_factory.mktemp("enclave-hub")
        smtp_port = free_port()
        sink = MailSink(base / "mail", port=smtp_port).start()
        hub = EnclaveHub(standin, base, base / "mail", smtp_port)
        try:
            hub.start()
        except Exception:
            sink.stop()
            log = hub.state / "hub.log"
            print(log.read_text()[-5000:] if log.exists() else "no hub log")
            raise
        _shared["hub"] = hub

        def teardown():
            hub.stop()
            sink.stop()

        request.config.add_cleanup(teardown)
    return _shared["hub"]
