"""`make demo`: the whole system on this machine with embedded defaults.

Starts the Kinetic stand-in and JupyterHub (which starts its proxy, the idle culler, the enclave
service and the local mail sink), prints where to go and who to be, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("KINETIC_STATE_DIR", ROOT / "state")).resolve()
IP = os.environ.get("KINETIC_DEMO_IP", "127.0.0.1")
PUBLIC_HOST = os.environ.get("KINETIC_DEMO_HOST", "localhost")
HUB_PORT = int(os.environ.get("KINETIC_HUB_PORT", "8000"))
STANDIN_PORT = int(os.environ.get("KINETIC_STANDIN_PORT", "8900"))
SMTP_PORT = int(os.environ.get("KINETIC_SMTP_PORT", "8925"))


def start(name: str, args: list[str], env: dict) -> subprocess.Popen:
    log = open(STATE / f"{name}.log", "ab")
    # SIGINT restored: a shell started in the background hands it down ignored (ENVIRONMENT.md).
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_http(url: str, proc: subprocess.Popen, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} stopped while starting; see {STATE / (name + '.log')}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as e:
            if getattr(e, "code", None):  # any HTTP answer means it is up
                return
        time.sleep(0.2)
    sys.exit(f"{name} did not answer at {url} within {timeout:.0f}s; see {STATE / (name + '.log')}")


def main() -> None:
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(bin_dir), env.get("PATH", "")])
    standin_url = f"http://{IP}:{STANDIN_PORT}"  # where the hub reaches the stand-in
    # where browsers reach the hub: a host name, since each analysis's workspace is served from a
    # subdomain of it (analysis-101.localhost:8000; browsers resolve *.localhost by themselves)
    hub_url = f"http://{PUBLIC_HOST}:{HUB_PORT}"
    env.update(
        KINETIC_STATE_DIR=str(STATE),
        KINETIC_URL=standin_url,
        KINETIC_HUB_IP=IP,
        KINETIC_HUB_PORT=str(HUB_PORT),
        KINETIC_SMTP_PORT=str(SMTP_PORT),
        KINETIC_PUBLIC_HUB_URL=hub_url,
        KINETIC_STOP_WORKSPACES_ON_EXIT="1",
    )
    procs: list[tuple[str, subprocess.Popen]] = []

    def stop_all(*_):
        for _name, p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _name, p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        print(f"stopped (workspace files are kept in {STATE / 'workspaces'})", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)

    if env.get("KINETIC_WORKSPACE_BACKEND", "container") == "container":
        # Every workspace is a container of the workspace image: build it now (first time only,
        # with a progress line), not during the first researcher's click.
        # (its progress line goes to stderr; the tag it prints on stdout is not for people)
        built = subprocess.run(
            [sys.executable, "-m", "kinetic_spawner.image"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        if built.returncode != 0:
            sys.exit("the workspace image could not be built (see above)")
    # Workspace containers reach the stand-in (synthetic data) through their network's gateway,
    # so it listens beyond loopback; browsers still use the address printed below.
    standin = start(
        "standin",
        [
            sys.executable,
            "-m",
            "kinetic_auth.standin.app",
            "--ip",
            "0.0.0.0",
            "--public-url",
            standin_url,
            "--port",
            str(STANDIN_PORT),
            "--state-dir",
            str(STATE),
        ],
        env,
    )
    procs.append(("standin", standin))
    wait_http(f"{standin_url}/accounts/login", standin, "standin")
    hub_url_here = f"http://{IP}:{HUB_PORT}"
    hub = start(
        "jupyterhub",
        [str(bin_dir / "jupyterhub"), "-f", str(ROOT / "hub_config" / "jupyterhub_config.py")],
        env,
    )
    procs.append(("jupyterhub", hub))
    wait_http(f"{hub_url_here}/hub/api", hub, "jupyterhub", timeout=120)
    print(
        f"""
Kinetic Workspaces is running (state and logs in {STATE}).

  Open  {hub_url}/hub/home     (exactly this host name: the sign-in cookie is per host;
                                           each analysis's workspace opens on analysis-<id>.{PUBLIC_HOST})
  Sign in on the Kinetic stand-in as one of:
     Ada Lovelace      researcher — analyses 101 (shared with Grace) and 102
     Grace Hopper      researcher — analyses 101 and 103
     Katherine Johnson researcher — analysis 104
     Rosalind Franklin, Marie Curie   reviewers (enclave)
     Olivia Operator   hub admin ({hub_url}/hub/admin)
  Kinetic's old link works too: {hub_url}/editor/#101
  Mail sent by the enclave lands in {STATE / "mail"}

Press Ctrl-C to stop everything (workspace files are kept in {STATE / "workspaces"}).
""",
        flush=True,
    )
    while True:
        for name, p in procs:
            if p.poll() is not None:
                print(f"{name} stopped (exit {p.returncode}); see {STATE / (name + '.log')}", flush=True)
                stop_all()
        time.sleep(1)


if __name__ == "__main__":
    main()
