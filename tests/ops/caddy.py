"""Caddy started from deploy/Caddyfile, for the tests of what the front proxy does."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from ..support import ROOT, free_port, start_process

DEPLOY = ROOT / "deploy"


def start_caddy_from_deploy(tmp_path: Path, tls_port: int, site_env: dict[str, str]):
    """Caddy running deploy/Caddyfile with the site's environment (as the caddy.service drop-in gives
    it), plus test-only global options: no admin endpoint, free ports, no system trust store."""
    wrapper = tmp_path / "Caddyfile"
    wrapper.write_text(
        "{\n\tadmin off\n\tskip_install_trust\n"
        f"\thttp_port {free_port()}\n\thttps_port {tls_port}\n}}\n"
        f"import {DEPLOY / 'Caddyfile'}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        **site_env,
    }
    return start_process(
        ["caddy", "run", "--adapter", "caddyfile", "--config", str(wrapper)],
        tmp_path / "caddy.log",
        env=env,
        cwd=tmp_path,
    )


def first_answer(caddy, url: str, log: Path, timeout: float = 30) -> requests.Response:
    """Caddy's first answer at ``url`` (it takes a moment to make its certificate and listen)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, verify=False, timeout=5)
        except requests.RequestException:
            assert caddy.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
