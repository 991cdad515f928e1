"""A real JupyterHub (with its configurable-http-proxy) started from hub_config/jupyterhub_config.py,
the same file `make demo` uses, with ports and the state dir moved to the test's own."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from .support import ROOT, child_env, free_port, start_process, stop_process, wait_for_http

FAKE_RSERVER_DIR = ROOT / "tests" / "bin"

EXTRA_CONFIG = """
# test-only: an operator service whose token drives the REST API
c.JupyterHub.services.append({"name": "test-operator", "api_token": os.environ["TEST_OPERATOR_TOKEN"]})
c.JupyterHub.load_roles.append({
    "name": "test-operator", "services": ["test-operator"],
    "scopes": ["admin:users", "admin:servers", "admin:auth_state", "list:users", "read:users",
               "read:servers", "tokens", "shares", "read:shares"],
})
c.Authenticator.auth_refresh_age = int(os.environ.get("TEST_AUTH_REFRESH_AGE", "300"))
if os.environ.get("TEST_FAKE_RSERVER"):
    # RStudio Server cannot be installed here: a fake rserver, mounted into every workspace
    c.ContainerBackend.extra_volumes = [os.environ["TEST_FAKE_RSERVER"] + ":/usr/local/bin/rserver:ro"]
"""


# every hub's container label (ContainerBackend.instance), so the session can remove what a
# failed test left running (tests/conftest.py)
INSTANCES: set[str] = set()


def container_instance(state_dir: Path) -> str:
    root = os.path.realpath(state_dir / "workspaces")
    return hashlib.sha256(root.encode()).hexdigest()[:10]


def remove_containers(instance: str) -> None:
    out = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=org.kinetic.workspace.instance={instance}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if out:
        subprocess.run(["podman", "rm", "-f", "-t", "2", *out], capture_output=True)


def owner(analysis_id) -> str:
    """The hub user that owns an analysis's workspace (kinetic_spawner/slugs.py)."""
    return f"analysis-{analysis_id}"


class Hub:
    def __init__(self, state_dir: Path, standin, env_overrides: dict | None = None, rstudio: bool = True):
        self.state_dir = state_dir
        self.standin = standin
        if state_dir != standin.state_dir and not (state_dir / "keys").exists():
            # a hub of its own still trusts the stand-in's cookies: same keys
            shutil.copytree(standin.state_dir / "keys", state_dir / "keys")
        self.token = secrets.token_hex(16)
        self.instance = container_instance(state_dir)
        INSTANCES.add(self.instance)
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"  # the hub's host; workspaces on subdomains of it
        self.log_path = state_dir / "hub.log"
        extra = state_dir / "extra_config.py"
        extra.write_text(EXTRA_CONFIG)
        path_prefix = f"{FAKE_RSERVER_DIR}:" if rstudio else ""  # for the process backend
        self.env = child_env(
            KINETIC_STATE_DIR=state_dir,
            KINETIC_HUB_PORT=self.port,
            KINETIC_HUB_API_PORT=free_port(),
            KINETIC_PROXY_API_PORT=free_port(),
            KINETIC_URL=standin.url,
            KINETIC_EXTRA_CONFIG=extra,
            KINETIC_ENCLAVE_PORT=free_port(),
            KINETIC_SMTP_PORT=free_port(),
            TEST_OPERATOR_TOKEN=self.token,
            **{
                "KINETIC_ORPHAN_GRACE_SECONDS": 5,
                **({"TEST_FAKE_RSERVER": FAKE_RSERVER_DIR / "rserver"} if rstudio else {}),
                **(env_overrides or {}),
            },
        )
        self.env["PATH"] = path_prefix + self.env["PATH"]
        self.proc = None

    # -- process -----------------------------------------------------------------------------
    def start(self, timeout: float = 60):
        self.proc = start_process(
            [
                str(Path(sys.executable).parent / "jupyterhub"),
                "-f",
                str(ROOT / "hub_config" / "jupyterhub_config.py"),
            ],
            self.log_path,
            env=self.env,
            cwd=self.state_dir,
        )
        wait_for_http(self.url + "/hub/api", timeout=timeout, proc=self.proc)
        # the proxy answers 404 until the hub has added its own route; after a crash, the old
        # proxy answers until the new hub replaces it
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + "/hub/api", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"hub did not come up\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop_all_workspaces(self):
        """Workspaces outlive the hub by design (cleanup_servers=False): tests stop theirs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for u in self.api("GET", "/users", params={"state": "active"}).json():
            for name in u.get("servers", {}):
                self.api("DELETE", f"/users/{u['name']}/servers/{name}")
        deadline = time.monotonic() + 60
        while self.api("GET", "/users", params={"state": "active"}).json() and time.monotonic() < deadline:
            time.sleep(0.3)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workspace_url(self, analysis_id, path: str = "") -> str:
        """Where analysis ``analysis_id``'s workspace is served: its own origin
        (``analysis-<id>.localhost``), owned by the analysis (kinetic_auth/origins.py)."""
        owner = f"analysis-{analysis_id}"
        return f"http://{owner}.localhost:{self.port}/user/{owner}/a-{analysis_id}/{path}"

    # -- REST API as the operator ---------------------------------------------------------------
    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kw)

    def servers(self, user: str) -> dict:
        r = self.api("GET", f"/users/{user}")
        return r.json().get("servers", {}) if r.status_code == 200 else {}

    def active_workspaces(self, server_name: str) -> list[str]:
        """Users who have an active (pending or ready) server of this name."""
        users = self.api("GET", "/users", params={"state": "active"}).json()
        return [u["name"] for u in users if server_name in u.get("servers", {})]

    # -- researchers ------------------------------------------------------------------------------
    def browser_session(self, uuid: str) -> requests.Session:
        """A session that signed in at Kinetic and then at the hub, as a browser would."""
        s = requests.Session()
        self.standin.sign_in(s, uuid)
        r = s.get(f"{self.url}/hub/login", allow_redirects=False)
        assert r.status_code == 302, (r.status_code, r.text[:500])
        return s

    def open_analysis(self, s: requests.Session, analysis_id, wait: bool = True, timeout: float = 90):
        """Open /hub/analysis/<id>; with wait, follow until the workspace answers. Returns final response."""
        r = s.get(f"{self.url}/hub/analysis/{analysis_id}", allow_redirects=False)
        if not wait or r.status_code not in (200, 302):
            return r
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = s.get(f"{self.url}/hub/analysis/{analysis_id}", allow_redirects=False)
            if r.status_code == 302 and "/user/" in r.headers["Location"]:
                return s.get(
                    self.url + r.headers["Location"]
                    if r.headers["Location"].startswith("/")
                    else r.headers["Location"],
                    timeout=30,
                )
            if "failed" in r.text.lower() and r.status_code >= 400:
                return r
            time.sleep(0.5)
        raise TimeoutError(
            f"workspace for analysis {analysis_id} not ready in {timeout}s\n{self.log()[-3000:]}"
        )

    def progress_events(self, s: requests.Session, analysis_id, timeout: float = 90) -> list[dict]:
        events = []
        with s.get(f"{self.url}/hub/analysis/{analysis_id}/progress", stream=True, timeout=timeout) as r:
            assert r.status_code == 200, r.status_code
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
        return events

    def stop_workspace(self, owner: str, server_name: str, timeout: float = 60):
        r = self.api("DELETE", f"/users/{owner}/servers/{server_name}")
        assert r.status_code in (202, 204), (r.status_code, r.text)
        deadline = time.monotonic() + timeout
        while server_name in self.servers(owner):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{owner}/{server_name} did not stop")
            time.sleep(0.3)


@contextmanager
def running_hub(state_dir: Path, standin, **kw):
    hub = Hub(state_dir, standin, **kw)
    try:
        yield hub.start()
    finally:
        hub.stop_all_workspaces()
        hub.stop()
