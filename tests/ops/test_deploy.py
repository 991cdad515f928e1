"""The hub started from its deployment description (deploy/), as systemd would start it.

The test reads ``deploy/kinetic-hub.service`` (``ExecStart``, ``Environment``, ``EnvironmentFile``,
``WorkingDirectory``, ``RestartSec``) and ``deploy/hub.env`` (the environment file template, read
with systemd's rules) and runs exactly that command, in the ``aws`` profile, with these changes,
each for a stated reason:

* paths: ``/opt/kinetic-workspaces`` is this checkout (its ``.venv`` this Python's), and
  ``/etc/kinetic`` and ``/var/lib/kinetic`` are the test's temporary folders;
* Kinetic is the stand-in (its keys are the "secret files"; admins and reviewers from its seed);
* the database is a throwaway local PostgreSQL, its password in the ``PGPASSFILE`` as documented
  (no TLS on it, so the URL drops ``sslmode=verify-full``);
* ports are free ones (the machine is shared), and the public URL is plain http on loopback;
* ``KINETIC_WORKSPACE_BACKEND=container``: the aws backend (EC2) is not implemented yet, so the
  workspaces are the local profile's podman containers;
* it runs as root, not ``User=kinetic``: the container backend needs rootful podman;
* test-only: an operator service token (``KINETIC_EXTRA_CONFIG``) to drive the REST API.

Then the hub is killed with SIGKILL (its process alone, as an out-of-memory kill does) and started
again after ``RestartSec`` (``Restart=always``); then upgraded as the README says (stop, the
``kinetic-hub-upgrade-db.service`` command, start). The workspace keeps running throughout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from kinetic_auth.standin import seed

from ..hub import INSTANCES, Hub, container_instance, owner
from ..support import ROOT, free_port, start_process, stop_process
from .caddy import DEPLOY, first_answer, start_caddy_from_deploy


# -- reading the description as systemd does -----------------------------------------------------------
def read_unit(path: Path) -> dict[str, list[str]]:
    """``{"Section.Key": [values...]}`` of a systemd unit file (continuation lines joined)."""
    out: dict[str, list[str]] = {}
    section, pending = "", ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def read_environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= rules: KEY=VALUE lines, # and ; comments, optional quotes."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_environment(unit: dict[str, list[str]]) -> dict[str, str]:
    env = {}
    for assignment in unit.get("Service.Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@dataclass
class Site:
    """The test's stand-ins for the server's folders."""

    etc: Path
    state: Path
    relocations: dict = field(default_factory=dict)

    def __post_init__(self):
        self.relocations = {
            "/opt/kinetic-workspaces/.venv": sys.prefix,
            "/opt/kinetic-workspaces": str(ROOT),
            "/etc/kinetic": str(self.etc),
            "/var/lib/kinetic": str(self.state),
        }

    def path(self, value: str) -> str:
        for prefix in sorted(self.relocations, key=len, reverse=True):
            value = value.replace(prefix, self.relocations[prefix])
        return value


class BehindTLS(requests.cookies.RequestsCookieJar):
    """The hub's public URL is https (Caddy in front), so its cookies are Secure; this test talks to
    the proxy directly over http (Caddy is tried on its own below), as a browser behind TLS would."""

    def set_cookie(self, cookie, *args, **kwargs):
        cookie.secure = False
        return super().set_cookie(cookie, *args, **kwargs)


class AsCaddyForwards(requests.adapters.HTTPAdapter):
    def __init__(self, tls_port: int, port: int):
        super().__init__()
        self.tls_port, self.port = tls_port, port

    def send(self, request, *args, **kwargs):
        if (
            request.url.startswith("https://")
            and f".localhost:{self.tls_port}/" in request.url
            or (request.url.startswith(f"https://localhost:{self.tls_port}/"))
        ):
            request.url = "http://" + request.url[len("https://") :].replace(
                f":{self.tls_port}/", f":{self.port}/", 1
            )
        return super().send(request, *args, **kwargs)


class UnitHub(Hub):
    """tests.hub.Hub (REST API, sign-in, opening analyses), started from the unit's ExecStart."""

    def browser_session(self, uuid: str) -> requests.Session:
        s = requests.Session()
        s.cookies = BehindTLS()
        # the public https URLs (hub and workspaces) reach the proxy's http port, as Caddy forwards them
        s.mount("https://", AsCaddyForwards(self.tls_port, self.port))
        self.standin.sign_in(s, uuid)
        r = s.get(f"{self.url}/hub/login", allow_redirects=False)
        assert r.status_code == 302, (r.status_code, r.text[:500])
        return s

    def __init__(self, site: Site, standin, postgres, unit_name: str = "kinetic-hub.service"):
        site.state.mkdir(parents=True, exist_ok=True)
        super().__init__(site.state, standin, rstudio=False)
        self.site = site
        self.tls_port = free_port()
        unit = read_unit(DEPLOY / unit_name)
        self.unit = unit
        self.command = [site.path(a) for a in shlex.split(unit["Service.ExecStart"][0])]
        self.cwd = Path(site.path(unit["Service.WorkingDirectory"][0]))
        self.restart_sec = float(unit["Service.RestartSec"][0])
        [env_file] = unit["Service.EnvironmentFile"]
        assert env_file == "/etc/kinetic/hub.env", env_file

        # the operator's /etc/kinetic: the template, filled in for this "site"
        template = read_environment_file(DEPLOY / "hub.env")
        secrets = site.etc / "secrets"
        secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = standin.state_dir / "keys"
        for name, source in (
            ("KINETIC_SSO_PUBLIC_KEY_FILE", "sso_public_key.pem"),
            ("KINETIC_SSO_ENCRYPTION_KEY_FILE", "sso_encryption_key"),
            ("KINETIC_ENCLAVE_KEY_FILE", "kinetic_enclave_key"),
        ):
            target = Path(site.path(template[name]))
            shutil.copy(keys / source, target)
            os.chmod(target, 0o600)
        password = os.urandom(12).hex()
        postgres.database("deploy_hub", password=password)
        pgpass = Path(site.path(template["PGPASSFILE"]))
        pgpass.write_text(f"127.0.0.1:{postgres.port}:deploy_hub:deploy_hub:{password}\n")
        os.chmod(pgpass, 0o600)
        assert (
            "@" in template["KINETIC_DB_URL"]
            and ":" not in template["KINETIC_DB_URL"].split("//")[1].split("@")[0]
        ), "the template's database URL must not carry a password"
        site_values = {
            "KINETIC_URL": standin.url,
            "KINETIC_PUBLIC_URL": standin.browser_url,
            # Caddy's site: localhost gets a certificate from Caddy's own CA (no ACME here)
            "KINETIC_DOMAIN": f"localhost:{self.tls_port}",
            "KINETIC_WORKSPACES_TLS": "internal",  # (a wildcard certificate from Caddy's own CA)
            "KINETIC_PUBLIC_HUB_URL": f"https://localhost:{self.tls_port}",
            "KINETIC_HUB_PORT": str(self.port),
            "KINETIC_HUB_API_PORT": self.env["KINETIC_HUB_API_PORT"],
            "KINETIC_PROXY_API_PORT": self.env["KINETIC_PROXY_API_PORT"],
            "KINETIC_ENCLAVE_PORT": self.env["KINETIC_ENCLAVE_PORT"],
            "KINETIC_ADMIN_UUIDS": ",".join(seed.ADMINS),
            "KINETIC_REVIEWER_UUIDS": ",".join(seed.REVIEWERS),
            "KINETIC_DB_URL": f"postgresql+psycopg://deploy_hub@127.0.0.1:{postgres.port}/deploy_hub",
        }
        filled = {k: site.path(v) for k, v in template.items()} | site_values
        env_path = site.etc / "hub.env"
        env_path.write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
        os.chmod(env_path, 0o640)

        # what systemd gives the process: its own few variables, Environment=, EnvironmentFile=
        self.env = {"LANG": "C.UTF-8"}
        self.env |= {k: site.path(v) for k, v in unit_environment(unit).items()}
        self.env |= read_environment_file(env_path)
        self.env |= {  # the test's changes (see the module docstring)
            "KINETIC_WORKSPACE_BACKEND": "container",
            "KINETIC_EXTRA_CONFIG": str(site.state / "extra_config.py"),
            "TEST_OPERATOR_TOKEN": self.token,
        }
        self.hub_api_port = int(self.env["KINETIC_HUB_API_PORT"])
        self.proxy_api_port = int(self.env["KINETIC_PROXY_API_PORT"])
        # in the aws profile the workspaces' homes default to <WorkingDirectory>/state/workspaces
        self.instance = container_instance(self.cwd / "state")
        INSTANCES.add(self.instance)
        Path(self.cwd).mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 90):
        self.proc = start_process(self.command, self.log_path, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + "/hub/api", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub from {self.command} did not come up\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def run_unit(self, unit_name: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run another unit's ExecStart (a oneshot) with this hub's environment."""
        unit = read_unit(DEPLOY / unit_name)
        assert unit["Service.EnvironmentFile"] == self.unit["Service.EnvironmentFile"]
        command = [self.site.path(a) for a in shlex.split(unit["Service.ExecStart"][0])]
        return subprocess.run(
            command, env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )

    def sigkill(self):
        """Kill the hub process alone, as the kernel's out-of-memory killer would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def sigterm(self, timeout: float = 60):
        """``systemctl stop`` with KillMode=mixed: SIGTERM to the hub, which stops its own children."""
        assert self.unit["Service.KillMode"] == ["mixed"]
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self.proc = None

    # -- what runs for this hub --------------------------------------------------------------------
    def managed_services(self) -> dict[str, list[int]]:
        """Processes of this hub's managed services, by service name (from their environment)."""
        api = f"JUPYTERHUB_API_URL=http://127.0.0.1:{self.hub_api_port}/hub/api".encode()
        found: dict[str, list[int]] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith(("S", "R", "D")):
                    continue
            except OSError:
                continue
            if api in environ:
                name = next(
                    (
                        v.split(b"=", 1)[1].decode()
                        for v in environ
                        if v.startswith(b"JUPYTERHUB_SERVICE_NAME=")
                    ),
                    None,
                )
                if name:
                    found.setdefault(name, []).append(int(pid))
        return found

    def proxies(self) -> list[int]:
        """configurable-http-proxy processes serving this hub (by their API port)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                any(a.endswith(b"configurable-http-proxy") for a in args[:3])
                and str(self.proxy_api_port).encode() in args
            ):
                found.append(int(pid))
        return found


def workspace_container(hub, analysis: int) -> list[str]:
    out = subprocess.run(
        [
            "podman",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=org.kinetic.workspace.instance={hub.instance}",
            "--filter",
            f"label=org.kinetic.workspace.analysis={analysis}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out


def services_settle(hub, timeout: float = 30) -> dict[str, list[int]]:
    """The managed services once they are up (the enclave takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        found = hub.managed_services()
        if {"idle-culler", "enclave"} <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


# -- the scenario, once for the module ----------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory, standin, postgres):
    base = tmp_path_factory.mktemp("deploy")
    site = Site(etc=base / "etc", state=base / "var-lib-kinetic")
    hub = UnitHub(site, standin, postgres)
    seen: dict = {}
    try:
        hub.start()
        ada = hub.browser_session(seed.ADA)
        page = hub.open_analysis(ada, 101, timeout=180)
        seen["opened"] = (page.status_code, page.url)
        seen["container"] = workspace_container(hub, 101)
        seen["services_before"] = services_settle(hub)
        seen["proxies_before"] = hub.proxies()
        seen["run"] = submit_a_run(hub, base)

        # SIGKILL, then what systemd does with Restart=always: start it again after RestartSec
        t0 = time.monotonic()
        hub.sigkill()
        time.sleep(0.5)
        seen["while_down"] = ada.get(page.url, timeout=10).status_code
        time.sleep(max(0.0, hub.restart_sec - (time.monotonic() - t0)))
        hub.start()
        seen["after_kill_servers"] = hub.servers(owner(101))
        seen["after_kill_page"] = ada.get(page.url, timeout=30)
        seen["after_kill_container"] = workspace_container(hub, 101)
        time.sleep(3)  # services a killed hub left behind would show themselves by now
        seen["services_after_kill"] = services_settle(hub)
        seen["proxies_after_kill"] = hub.proxies()
        seen["run_after_kill"] = enclave_run(hub, seen["run"]["id"])

        # an upgrade, as the README says: stop, upgrade-db (its own unit), start
        hub.sigterm()
        seen["upgrade_db"] = hub.run_unit("kinetic-hub-upgrade-db.service")
        hub.start()
        seen["after_upgrade_servers"] = hub.servers(owner(101))
        seen["after_upgrade_page"] = ada.get(page.url, timeout=30)
        seen["after_upgrade_container"] = workspace_container(hub, 101)
        seen["log"] = hub.log()
        yield hub, seen
    finally:
        hub.stop_all_workspaces()
        hub.stop()
        for pid in hub.proxies():  # a proxy orphaned by a failed run of this test
            os.kill(pid, signal.SIGTERM)


def researcher_token(hub, uuid: str) -> str:
    r = hub.api("POST", f"/users/{uuid}/tokens", json={"note": "deploy test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def submit_a_run(hub, base: Path) -> dict:
    """Ada submits analysis 101 to the enclave (an uploaded archive, as from outside the hub)."""
    import asyncio

    from enclave_service.archive import create_archive

    from ..enclave.service_fixtures import GOOD_MAIN, make_home

    home = make_home(base / "run-home", GOOD_MAIN.format(extra=""))
    archive = asyncio.run(create_archive(home, base / "run.tar.zst"))
    with open(archive.path, "rb") as f:
        r = requests.post(
            f"{hub.url}/services/enclave/api/runs",
            headers={"Authorization": f"token {researcher_token(hub, seed.ADA)}"},
            data={"analysis_id": "101", "message": "before the crash"},
            files={"archive": ("archive.tar.zst", f, "application/zstd")},
            timeout=60,
        )
    assert r.status_code == 201, r.text
    return r.json()


def enclave_run(hub, run_id) -> dict:
    """The run as the enclave service reports it (it may take a moment to come back)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = requests.get(
                f"{hub.url}/services/enclave/api/runs/{run_id}",
                headers={"Authorization": f"token {researcher_token(hub, seed.ADA)}"},
                timeout=30,
            )
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the enclave service did not answer after the restart"
        time.sleep(1)


def test_every_enclave_run_is_kept_across_a_killed_hub(deployed):
    hub, seen = deployed
    before, after = seen["run"], seen["run_after_kill"]
    assert after["id"] == before["id"] and after["message"] == "before the crash"
    assert after["analysis_id"] in (101, "101")


def test_the_hub_starts_from_the_unit_and_serves_a_workspace(deployed):
    hub, seen = deployed
    status, url = seen["opened"]
    assert status == 200 and "/user/" in url and "/a-101/" in url, seen["opened"]
    assert len(seen["container"]) == 1
    assert "postgresql" in hub.env["KINETIC_DB_URL"] and hub.env["KINETIC_PROFILE"] == "aws"
    enclave_port = hub.env["KINETIC_ENCLAVE_PORT"]
    assert f"Starting managed service enclave at http://127.0.0.1:{enclave_port}" in seen["log"]


def test_the_environment_file_lists_every_setting_the_config_reads():
    """deploy/hub.env is the operator's list: every KINETIC_* variable jupyterhub_config.py reads
    is there, set or shown with its default."""
    import re

    config = (ROOT / "hub_config" / "jupyterhub_config.py").read_text()
    template = (DEPLOY / "hub.env").read_text()
    listed = set(re.findall(r"^#? ?(KINETIC_[A-Z0-9_]+)=", template, flags=re.M))
    missing = sorted(set(re.findall(r"KINETIC_[A-Z0-9_]+", config)) - listed)
    assert not missing, f"add to deploy/hub.env (and the README's table): {missing}"
    # and every variable the template sets is one the kit reads (no stale names)
    code = (
        config
        + (DEPLOY / "Caddyfile").read_text()
        + "".join(
            p.read_text(errors="replace")
            for package in ("kinetic_auth", "kinetic_spawner", "enclave_service")
            for p in (ROOT / package).rglob("*")
            if p.suffix in (".py", ".sh")
        )
    )
    stale = sorted(name for name in listed if name not in code)
    assert not stale, stale


def test_a_killed_hub_restarted_as_systemd_would_keeps_the_workspace_running_and_served(deployed):
    hub, seen = deployed
    assert seen["while_down"] == 200, "the proxy a killed hub leaves keeps serving the workspace"
    assert seen["after_kill_servers"].get("a-101", {}).get("ready"), seen["after_kill_servers"]
    page = seen["after_kill_page"]
    assert page.status_code == 200 and "/a-101/" in page.url
    assert seen["after_kill_container"] == seen["container"], "the same workspace, not a new one"


def test_an_upgrade_as_documented_keeps_the_workspace_running(deployed):
    hub, seen = deployed
    upgrade = seen["upgrade_db"]
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert seen["after_upgrade_servers"].get("a-101", {}).get("ready"), seen["after_upgrade_servers"]
    assert seen["after_upgrade_page"].status_code == 200
    assert seen["after_upgrade_container"] == seen["container"]


def test_a_killed_hub_restarted_ends_with_exactly_one_of_each_managed_service(deployed):
    hub, seen = deployed
    before, after = seen["services_before"], seen["services_after_kill"]
    assert sorted(before) == ["enclave", "idle-culler"] and all(len(p) == 1 for p in before.values()), before
    assert {name: len(pids) for name, pids in after.items()} == {"enclave": 1, "idle-culler": 1}, after
    assert not set(before["enclave"]) & set(after["enclave"]), "the old enclave service is still running"
    assert len(seen["proxies_after_kill"]) == 1 and seen["proxies_after_kill"] != seen["proxies_before"]
    assert "Address already in use" not in seen["log"]


@pytest.mark.skipif(
    shutil.which("caddy") is None,
    reason="Caddy is not installed (apt-get install caddy; add it to APT_PACKAGES to run this)",
)
def test_caddy_from_deploy_terminates_tls_in_front_of_the_hub(deployed, tmp_path):
    """deploy/Caddyfile with the hub's environment file (as the caddy.service drop-in gives it):
    HTTPS in front of the proxy; the hub sees https (sign-in return links), a workspace answers."""
    hub, _ = deployed
    site_env = read_environment_file(hub.site.etc / "hub.env")
    caddy = start_caddy_from_deploy(tmp_path, hub.tls_port, site_env)
    base = f"https://localhost:{hub.tls_port}"
    try:
        api = first_answer(caddy, f"{base}/hub/api", tmp_path / "caddy.log")
        assert api.status_code == 200 and "version" in api.json()
        assert api.headers.get("Strict-Transport-Security", "").startswith("max-age=")
        login = requests.get(f"{base}/hub/login", verify=False, allow_redirects=False, timeout=10)
        assert login.status_code == 302, login.status_code
        assert "r=https%3A%2F%2Flocalhost" in login.headers["Location"], login.headers["Location"]
        token = hub.api("POST", f"/users/{seed.ADA}/tokens", json={"expires_in": 300}).json()["token"]
        # the workspace, on its own origin behind the wildcard site
        status = requests.get(
            f"https://analysis-101.localhost:{hub.tls_port}/user/analysis-101/a-101/api/status",
            verify=False,
            timeout=30,
            headers={"Authorization": f"token {token}"},
        )
        assert status.status_code == 200, status.text[:300]
    finally:
        stop_process(caddy)
