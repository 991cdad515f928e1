"""Attacks from inside a workspace, made as a hostile researcher would: R code run in her own
kernel through the workspace server's API. Each test performs the attack and sees it fail.

Ada has analysis 101 open; Grace has 103 open (the "other workspace"). The hub is this module's
own, with a small memory limit so the memory hog is quick.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from kinetic_auth.standin.seed import ADA, GRACE

from .hub import owner, running_hub
from .kernel import Kernel

MEMORY = "768m"
PIDS = 256


@pytest.fixture(scope="module")
def hub(standin, tmp_path_factory):
    state = tmp_path_factory.mktemp("isolation")
    env = {"KINETIC_WORKSPACE_MEMORY": MEMORY, "KINETIC_WORKSPACE_PIDS": str(PIDS)}
    with running_hub(state, standin, env_overrides=env, rstudio=False) as h:
        yield h


def user_token(hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "isolation test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def open_workspace(hub, user: str, analysis: int) -> Kernel:
    s = hub.browser_session(user)
    page = hub.open_analysis(s, analysis, timeout=180)
    assert page.status_code == 200, page.text[:500]
    return Kernel(hub.workspace_url(analysis), user_token(hub, user))


@pytest.fixture(scope="module")
def ada(hub):
    kernel = open_workspace(hub, ADA, 101)
    assert kernel.name == "ir"
    return kernel


@pytest.fixture(scope="module")
def grace(hub):
    return open_workspace(hub, GRACE, 103)


def r_lines(kernel: Kernel, code: str, timeout: float = 120) -> list[str]:
    result = kernel.run(code, timeout=timeout)
    assert result.status == "ok", (result.error, result.text[-2000:])
    return result.stdout.splitlines()


def python_in_workspace(kernel: Kernel, script: str, timeout: float = 120) -> dict:
    """Run a Python script inside the workspace from R (system2), as a researcher may; it prints
    one JSON object."""
    code = (
        f"writeLines({json.dumps(script)}, '/tmp/probe.py'); "
        f"cat(system2('python3', '/tmp/probe.py', stdout=TRUE), sep='\\n')"
    )
    out = r_lines(kernel, code, timeout)
    return json.loads(out[-1])


def test_the_workspace_runs_as_1010_without_privileges(ada):
    out = r_lines(
        ada,
        """
        cat(system("id", intern = TRUE), "\\n")
        cat("which:", Sys.which(c("sudo", "podman", "docker")), "\\n")
        cat("su-says:", suppressWarnings(system("echo x | su -c 'id -u' root 2>&1", intern = TRUE)), "\\n")
        st <- readLines("/proc/self/status")
        cat(grep("^(CapEff|CapPrm|NoNewPrivs):", st, value = TRUE), sep = "\\n")
        cat("write-root:", tryCatch({writeLines("x", "/opt/owned"); "yes"}, error = function(e) "no",
                                    warning = function(w) "no"), "\\n")
    """,
    )
    text = "\n".join(out)
    assert "uid=1010" in text and "gid=1010" in text
    assert "which:" in text and not any(p in text for p in ("/sudo", "/podman", "/docker"))
    su_line = next(line for line in out if line.startswith("su-says:"))
    assert su_line.split()[-1] != "0", su_line  # setuid su exists in Debian's base but gives nothing
    assert "CapEff:\t0000000000000000" in text and "CapPrm:\t0000000000000000" in text
    assert "NoNewPrivs:\t1" in text
    assert "write-root: no" in text  # the image is read-only


def test_hub_files_keys_databases_and_other_homes_are_out_of_reach(ada, hub):
    state = hub.state_dir
    targets = [
        *sorted((state / "keys").iterdir()),
        state / "jupyterhub.sqlite",
        *sorted((state / "enclave").glob("*.sqlite*")),
        state / "workspaces" / "102",
        state / "workspaces" / "103",
        state / "workspaces" / "103" / ".Renviron",
        state,
    ]
    assert len(targets) > 6
    probe = "c(" + ", ".join(json.dumps(str(p)) for p in targets) + ")"
    out = r_lines(
        ada,
        f"""
        for (p in {probe}) cat(p, file.exists(p), "\\n")
        cat(readLines("/proc/self/mountinfo"), sep = "\\n")
    """,
    )
    seen = [
        line.strip()
        for line in out
        if line.startswith("/") and line.strip().rsplit(" ", 1)[-1] in ("TRUE", "FALSE")
    ]
    assert len(seen) == len(targets) and all(line.endswith("FALSE") for line in seen), seen
    # the only thing of this machine mounted in the workspace is its own analysis home
    mounts = [line for line in out if line[:1].isdigit() and str(state) in line]
    assert len(mounts) == 1 and f"{state}/workspaces/101 /home/editor " in mounts[0], mounts


def test_no_other_process_or_its_environment_is_visible(ada, grace, hub):
    crypt_key = (hub.state_dir / "keys" / "crypt_key").read_text().strip()
    cookie_secret = (hub.state_dir / "keys" / "jupyterhub_cookie_secret").read_text().strip()
    info = python_in_workspace(
        ada,
        """
import json, os
procs = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
            env = open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')
            uid = [l for l in open(f'/proc/{pid}/status') if l.startswith('Uid:')][0].split()[1]
        except OSError:
            continue
        procs.append({'pid': pid, 'cmd': cmd, 'env': env, 'uid': uid})
print(json.dumps(procs))
""",
    )
    assert info, "no process seen at all"
    everything = json.dumps(info)
    assert {p["uid"] for p in info} == {"1010"}
    assert not any(
        "jupyterhub " in p["cmd"] or "configurable-http-proxy" in p["cmd"] or "enclave_service" in p["cmd"]
        for p in info
    ), [p["cmd"] for p in info]
    for secret in (crypt_key, cookie_secret, "CONFIGPROXY_AUTH_TOKEN", "JUPYTERHUB_CRYPT_KEY"):
        assert secret not in everything
    # Grace's workspace (another container) is not among them: her server's token is not here
    assert "JUPYTERHUB_USER=" + GRACE not in everything


class Listener:
    """A TCP server on every address of this machine, on a port no workspace is allowed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_the_network_reaches_the_hub_api_only_with_its_own_scopes(ada, grace, hub):
    listener = Listener()
    assert hub.servers(owner(103))["a-103"]["ready"]
    found = json.loads(
        os.popen(
            f"podman ps --filter label=org.kinetic.workspace.user={owner(103)} "
            "--filter label=org.kinetic.workspace.server=a-103 --format json"
        ).read()
    )
    inspect = json.loads(os.popen(f"podman inspect {found[0]['Id']}").read())[0]
    grace_ip = next(iter(inspect["NetworkSettings"]["Networks"].values()))["IPAddress"]
    targets = {
        "proxy_api": int(hub.env["KINETIC_PROXY_API_PORT"]),
        "enclave": int(hub.env["KINETIC_ENCLAVE_PORT"]),
        "mail": int(hub.env["KINETIC_SMTP_PORT"]),
        "public_proxy": hub.port,
        "listener": listener.port,
        "hub_api": int(hub.env["KINETIC_HUB_API_PORT"]),
    }
    result = python_in_workspace(
        ada,
        f"""
import json, os, socket, urllib.request, urllib.error
api = os.environ['JUPYTERHUB_API_URL']
gateway = api.split('//')[1].split(':')[0]
def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return 'open'
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
out = {{name: tcp(gateway, port) for name, port in {json.dumps(targets)}.items()}}
out['metadata'] = tcp('169.254.169.254', 80)
out['other_workspace'] = tcp({json.dumps(grace_ip)}, 8888)
token = os.environ['JUPYTERHUB_API_TOKEN']
def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=body,
                                 headers={{'Authorization': 'token ' + token, 'Content-Type': 'application/json'}})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
out['whoami'] = call('GET', '/user')
out['list_users'] = call('GET', '/users')[0]
out['grace'] = call('GET', '/users/{GRACE}')[0]
out['ada'] = call('GET', '/users/{ADA}')[0]
out['other_analysis'] = call('GET', '/users/{owner(103)}')[0]
out['new_token'] = call('POST', '/users/{owner(101)}/tokens', b'{{}}')[0]
out['start_other'] = call('POST', '/users/{owner(101)}/servers/a-102', b'{{}}')[0]
import datetime
now = datetime.datetime.now(datetime.timezone.utc).isoformat()
out['activity'] = call('POST', '/users/{owner(101)}/activity',
                       json.dumps({{'servers': {{'a-101': {{'last_activity': now}}}}}}).encode())[0]
print(json.dumps(out))
""",
    )
    assert result["hub_api"] == "open"
    for name in ("proxy_api", "enclave", "mail", "public_proxy", "listener", "other_workspace"):
        assert result[name] != "open", (name, result)
    assert result["metadata"] != "open"
    assert listener.accepted == 0
    status, body = result["whoami"]
    # the workspace's token is the analysis's, never one of its researchers'
    assert status == 200 and json.loads(body)["name"] == owner(101)
    assert result["list_users"] == 403
    for other in ("grace", "ada", "other_analysis"):
        assert result[other] in (403, 404), (other, result)
    assert result["new_token"] == 403 and result["start_other"] == 403
    assert result["activity"] == 200, result  # the culler sees a busy workspace as busy


def test_no_secret_on_any_command_line_of_this_machine(ada, hub, standin):
    s = requests.Session()
    standin.sign_in(s, ADA)
    api_key = s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["api_key"]
    token = r_lines(ada, 'cat(Sys.getenv("JUPYTERHUB_API_TOKEN"), "\\n")')[-1].strip()
    assert len(token) > 16
    renviron = r_lines(ada, 'cat(readLines("~/.Renviron"), sep = "\\n")')
    assert f"ANALYSIS_API_KEY={api_key}" in renviron  # R has its key, from the home
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert token.encode() not in cmdline and api_key.encode() not in cmdline, pid


def workspace_answers(hub, analysis_id: int, token: str) -> bool:
    r = requests.get(
        hub.workspace_url(analysis_id, "api/status"), headers={"Authorization": f"token {token}"}, timeout=30
    )
    return r.status_code == 200


def hub_api_answers(hub) -> bool:
    return hub.api("GET", "/").status_code == 200


def test_a_memory_hog_is_killed_inside_its_workspace(ada, grace, hub):
    t0 = time.monotonic()
    result = ada.run(
        'x <- numeric(1.5e8); y <- numeric(1.5e8); cat("survived", length(x) + length(y))', timeout=120
    )
    assert "survived" not in result.stdout and result.status in ("dead", "error"), result
    assert time.monotonic() - t0 < 100
    assert hub_api_answers(hub)
    assert workspace_answers(hub, 103, grace.headers["Authorization"].split()[1])
    # the server itself survives: only the hungry kernel went
    assert workspace_answers(hub, 101, ada.headers["Authorization"].split()[1])


def uid_1010_tasks() -> int:
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0] == "1010":
                n += 1
        except (OSError, IndexError):
            pass
    return n


def test_a_fork_bomb_stays_inside_its_workspace(hub, grace):
    kernel = Kernel(hub.workspace_url(101), user_token(hub, ADA))
    before = uid_1010_tasks()
    kernel.run("""system("bash -c 'b(){ b|b& }; b' >/dev/null 2>&1", wait = FALSE); cat("lit")""", timeout=60)
    time.sleep(8)
    during = uid_1010_tasks()
    assert during - before <= PIDS + 8, (before, during)  # bounded by the workspace's pids limit
    t0 = time.monotonic()
    assert hub_api_answers(hub)
    assert time.monotonic() - t0 < 5
    assert workspace_answers(hub, 103, grace.headers["Authorization"].split()[1])
    # stopping the workspace ends the bomb with it; the home stays
    hub.stop_workspace(owner(101), "a-101", timeout=120)
    deadline = time.monotonic() + 30
    while uid_1010_tasks() > before and time.monotonic() < deadline:
        time.sleep(1)
    assert uid_1010_tasks() <= before
    assert (hub.state_dir / "workspaces" / "101" / "kinetic" / "main.r").exists()


LISTENER = """
import http.server, json, sys
class Heard(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open("/tmp/heard.jsonl", "a") as f:
            f.write(json.dumps({"path": self.path, "headers": dict(self.headers)}) + "\\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"LISTENER-BODY")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", 9123), Heard).serve_forever()
"""


def test_a_listener_in_a_shared_workspace_hears_nothing_from_a_visitor(hub):
    """Issue 7, attack 1 as written: Ada's code listens on a port inside analysis 101's workspace;
    Grace joins 101 and opens the port through the workspace's proxy. The proxy serves named
    servers only, so nothing of Grace's request (her Kinetic cookie above all) reaches the code."""
    ada = open_workspace(hub, ADA, 101)  # (opened again: the fork bomb test stops it)
    started = python_in_workspace(
        ada,
        f"import json, subprocess\nopen('/tmp/listen.py', 'w').write({LISTENER!r})\n"
        "p = subprocess.Popen(['python3', '/tmp/listen.py'], start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=open('/tmp/listen.err', 'w'))\n"
        "print(json.dumps({'pid': p.pid}))\n",
    )
    assert started["pid"] > 0
    alive = python_in_workspace(
        ada,
        "import json, time, urllib.request\n"
        "body, err = '', ''\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        body = urllib.request.urlopen('http://127.0.0.1:9123/self-check', timeout=5).read().decode()\n"
        "        break\n"
        "    except Exception as e:\n"
        "        err = repr(e)\n"
        "        time.sleep(0.2)\n"
        "print(json.dumps({'body': body, 'err': err + open('/tmp/listen.err').read()}))\n",
    )
    assert alive["body"] == "LISTENER-BODY", alive  # the listener runs and answers inside the workspace

    grace = hub.browser_session(GRACE)
    assert hub.open_analysis(grace, 101).url.startswith(hub.workspace_url(101))  # she joins 101
    assert grace.cookies.get("oxa")  # her browser holds her Kinetic sign-in
    for route in ("proxy/9123/", "proxy/absolute/9123/", "proxy/localhost:9123/", "proxy/127.0.0.1:9123/"):
        r = grace.get(hub.workspace_url(101, route), timeout=30)
        assert r.status_code in (403, 404) and "LISTENER-BODY" not in r.text, (route, r.status_code)

    heard = python_in_workspace(
        ada,
        "import json, os\n"
        "lines = open('/tmp/heard.jsonl').read().splitlines() if os.path.exists('/tmp/heard.jsonl') else []\n"
        "print(json.dumps([json.loads(line) for line in lines]))\n",
    )
    assert [h["path"] for h in heard] == ["/self-check"], heard  # nothing but its own check
    assert not any("oxa=" in json.dumps(h) for h in heard)
