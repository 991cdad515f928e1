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


def resolve_local_names() -> None:
    """``localhost`` and ``*.localhost`` resolve to 127.0.0.1 in this process, as browsers resolve
    them (Chromium does it itself; glibc here knows only ``localhost``). Each analysis's workspace
    is served from ``analysis-<id>.localhost:<port>`` (kinetic_auth/origins.py); the servers all
    listen on 127.0.0.1, so IPv6 is never tried."""
    if getattr(socket.getaddrinfo, "_kinetic", False):
        return
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and (name == "localhost" or name.endswith(".localhost")):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    getaddrinfo._kinetic = True
    socket.getaddrinfo = getaddrinfo


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
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env or child_env(),
        cwd=cwd or ROOT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


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
        self.url = url  # where servers reach it (127.0.0.1)
        # where browsers reach it: the hub's host name (localhost), so that its sign-in cookie,
        # host-only, is the hub's to read (ports aside) and never a workspace's (analysis-<id>.localhost)
        self.browser_url = url.replace("//127.0.0.1:", "//localhost:")
        self.state_dir = state_dir
        self.proc = proc

    def sign_in(self, session: requests.Session, uuid: str) -> str:
        """Sign in on the stand-in's page as a person would; returns the SSO cookie value."""
        r = session.post(
            f"{self.browser_url}/accounts/login", data={"uuid": uuid, "r": "/"}, allow_redirects=False
        )
        r.raise_for_status()
        return session.cookies.get("oxa")

    def records_token(self) -> str:
        return (self.state_dir / "keys" / "standin_records_token").read_text().strip()

    def set_researchers(self, analysis_id, uuids) -> None:
        """Change who is on an analysis, as its owner does in Kinetic (a test-only endpoint)."""
        r = requests.put(
            f"{self.url}/standin/analyses/{analysis_id}/researchers",
            json={"researchers": list(uuids)},
            timeout=5,
            headers={"Authorization": f"Bearer {self.records_token()}"},
        )
        r.raise_for_status()

    def sign_out(self, session: requests.Session) -> None:
        """Sign out of Kinetic in this browser session (Kinetic's session ends on its side too)."""
        session.get(f"{self.browser_url}/accounts/logout", allow_redirects=False, timeout=5)

    def records(self) -> dict:
        """What the enclave told the stand-in (keys masked); the endpoint wants the records token."""
        r = requests.get(
            f"{self.url}/standin/records",
            timeout=5,
            headers={"Authorization": f"Bearer {self.records_token()}"},
        )
        r.raise_for_status()
        return r.json()


@contextmanager
def running_standin(state_dir: Path, seed_file: Path | None = None):
    port = free_port()
    # beyond loopback: workspace containers fetch synthetic data through their network's gateway
    args = [
        sys.executable,
        "-m",
        "kinetic_auth.standin.app",
        "--port",
        str(port),
        "--ip",
        "0.0.0.0",
        "--public-url",
        f"http://127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
    ]
    if seed_file:
        args += ["--seed", str(seed_file)]
    proc = start_process(args, state_dir / "standin.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/accounts/login", proc=proc)
        yield Standin(url, state_dir, proc)
    finally:
        stop_process(proc)


# -- PostgreSQL ------------------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (``/usr/lib/postgresql/<version>/bin``), newest first."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1:``port``. ``database(name)`` makes a fresh
    database (and a login role of the same name) and returns its SQLAlchemy URL: one for the hub,
    another for the enclave, each test its own."""

    def __init__(self, port: int, superuser: str, password: str, data_dir: Path):
        self.port = port
        self.superuser = superuser
        self.password = password
        self.data_dir = data_dir
        self._made: set[str] = set()

    def connect(self, dbname: str = "postgres", user: str | None = None, password: str | None = None):
        import psycopg  # the test extra; imported here so support.py loads without it

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            autocommit=True,
            user=user or self.superuser,
            password=password or self.password,
        )

    def database(self, name: str, password: str | None = None, driver: str = "psycopg") -> str:
        """Create database ``name`` owned by a new role ``name`` (password: ``password`` or a
        random one); returns ``postgresql+<driver>://name:password@127.0.0.1:port/name``."""
        import secrets as _secrets

        from psycopg import sql

        if name in self._made:
            raise ValueError(f"database {name!r} exists already: take another name per use")
        password = password or _secrets.token_hex(12)
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name))
            )
        self._made.add(name)
        return f"postgresql+{driver}://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def query(self, dbname: str, statement: str, *args) -> list[tuple]:
        with self.connect(dbname) as conn:
            return conn.execute(statement, args or None).fetchall()


@contextmanager
def running_postgres(version_bin: Path | None = None):
    """Start a PostgreSQL server from Debian's packages in a temporary data directory on a free
    port (password auth over TCP, as a real database server), yield a ``Postgres``; remove it all
    afterwards. As root, ``initdb`` and the server run as the ``postgres`` user (initdb refuses
    root), so the data directory lives outside pytest's 0700 temporary tree."""
    import secrets as _secrets
    import shutil
    import tempfile

    bindir = version_bin or postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server programs not found: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="kinetic-pg-"))
    data = base / "data"
    password = _secrets.token_hex(16)
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    (base / "pwfile").write_text(password + "\n")
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(base / "pwfile", "postgres", "postgres")
    os.chmod(base / "pwfile", 0o600)
    port = free_port()
    log = base / "server.log"
    try:
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "kinetic",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={base / 'pwfile'}",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        started = subprocess.run(
            [
                *run_as,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                "30",
                "start",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if started.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{tail}")
        yield Postgres(port, "kinetic", password, data)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)
