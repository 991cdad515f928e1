"""Helpers the tests share: free ports, starting real servers as subprocesses, waiting for them."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(VENV_BIN), env.get("PATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for_http(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2, allow_redirects=False)
            return
        except requests.RequestException as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def start_process(args: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or child_env(),
                            cwd=cwd or ROOT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class Standin:
    def __init__(self, url: str, state_dir: Path, proc):
        self.url = url
        self.state_dir = state_dir
        self.proc = proc

    def sign_in(self, session: requests.Session, uuid: str) -> str:
        """Sign in on the stand-in's page as a person would; returns the SSO cookie value."""
        r = session.post(f"{self.url}/accounts/login", data={"uuid": uuid, "r": "/"}, allow_redirects=False)
        r.raise_for_status()
        return session.cookies.get("oxa")

    def records_token(self) -> str:
        return (self.state_dir / "keys" / "standin_records_token").read_text().strip()

    def records(self) -> dict:
        """What the enclave told the stand-in (keys masked); the endpoint wants the records token."""
        r = requests.get(f"{self.url}/standin/records", timeout=5,
                         headers={"Authorization": f"Bearer {self.records_token()}"})
        r.raise_for_status()
        return r.json()


@contextmanager
def running_standin(state_dir: Path, seed_file: Path | None = None):
    port = free_port()
    # beyond loopback: workspace containers fetch synthetic data through their network's gateway
    args = [sys.executable, "-m", "kinetic_auth.standin.app", "--port", str(port), "--ip", "0.0.0.0",
            "--public-url", f"http://127.0.0.1:{port}", "--state-dir", str(state_dir)]
    if seed_file:
        args += ["--seed", str(seed_file)]
    proc = start_process(args, state_dir / "standin.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/accounts/login", proc=proc)
        yield Standin(url, state_dir, proc)
    finally:
        stop_process(proc)
