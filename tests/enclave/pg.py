"""A throwaway PostgreSQL server for tests: Debian's packages, a temporary data directory owned by
``postgres``, a free port on loopback, no Docker. Starts in about 2 s; every setting that makes a
database safe across a power cut is off, because this one lives for one test session.

    from tests.enclave.pg import running_postgres
    with running_postgres() as pg:
        url = pg.create_database("enclave")      # postgresql+psycopg://kinetic@127.0.0.1:PORT/enclave

As a fixture (``postgres``, one server per session): ``from tests.enclave.pg import postgres``.
Reusable by any test: it depends on nothing of the enclave. ``initdb`` refuses to run as root, so
as root the server runs as ``postgres`` through ``runuser``; as any other user it runs as that user.
When the binaries are missing and we are root, ``apt-get install postgresql`` runs once; otherwise
the tests that need it are skipped with the reason.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import free_port

SUPERUSER = "kinetic"
# throwaway: no durability, so a test never waits on fsync
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def pg_bin_dir(install: bool = True) -> Path | None:
    """The newest /usr/lib/postgresql/<N>/bin holding initdb and pg_ctl; installs Debian's
    ``postgresql`` package first when it is missing and we may (root, ``install``)."""
    def find():
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                      if Path(d).parent.name.isdigit() else 0)
        for d in reversed(dirs):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
        found = shutil.which("initdb")
        return Path(found).resolve().parent if found and shutil.which("pg_ctl") else None
    found = find()
    if found is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                       env=env, capture_output=True, timeout=600)
        found = find()
    return found


class Postgres:
    def __init__(self, bin_dir: Path, base: str | None = None):
        self.bin = bin_dir
        self.as_root = os.geteuid() == 0
        self.owner = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        # not under pytest's tmp dirs: those are 0700 root's, and the server runs as postgres
        self.dir = Path(tempfile.mkdtemp(prefix="kinetic-pg-", dir=base))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"

    def _cmd(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        r = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if check and r.returncode:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed ({r.returncode}): {r.stderr.strip()}\n{tail}")
        return r

    def start(self) -> "Postgres":
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", SUPERUSER,
                  "-E", "UTF8", "--locale=C", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} {FAST}"
        self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                      check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        import psycopg
        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running_postgres(base: str | None = None):
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pg = Postgres(bin_dir, base)
    t0 = time.monotonic()
    try:
        pg.start()
        pg.started_in = time.monotonic() - t0
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session; tests make their own databases on it
    (``postgres.create_database(name)``)."""
    with running_postgres() as pg:
        yield pg
