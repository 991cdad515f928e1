"""What deploy/Caddyfile lets through to the hub and to workspaces (issue 7: no sign-in reaches a
workspace). Real Caddy; an echo server stands where the proxy would be and reports what arrived.
(Caddy in front of a whole deployed hub: tests/ops/test_deploy.py.)"""

from __future__ import annotations

import shutil
import sys

import pytest
import requests

from ..support import free_port, start_process, stop_process
from .caddy import first_answer, start_caddy_from_deploy

ECHO_SERVER = """
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "cookies": self.headers.get_all("Cookie") or []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.mark.skipif(shutil.which("caddy") is None, reason="Caddy is not installed (apt-get install caddy)")
def test_caddy_from_deploy_keeps_sign_in_cookies_from_workspaces(tmp_path):
    """Issue 7: in production Kinetic's cookie is domain-wide, so the browser sends it to every
    path of the hub's domain. deploy/Caddyfile removes it (and the hub's login cookie) from every
    request that is not for /hub/, whatever else the Cookie header holds; the workspace's own
    cookies pass. An echo server stands where the proxy would be and reports what arrived."""
    echo_port, tls_port = free_port(), free_port()
    (tmp_path / "echo.py").write_text(ECHO_SERVER)
    echo = start_process([sys.executable, str(tmp_path / "echo.py"), str(echo_port)], tmp_path / "echo.log")
    caddy = start_caddy_from_deploy(
        tmp_path,
        tls_port,
        {"KINETIC_DOMAIN": "localhost", "KINETIC_HUB_PORT": str(echo_port), "KINETIC_COOKIE_NAME": "oxa"},
    )
    base = f"https://localhost:{tls_port}"

    def arrived(path: str, cookie: str) -> str:
        r = requests.get(base + path, headers={"Cookie": cookie}, verify=False, timeout=10)
        assert r.status_code == 200, r.text[:300]
        return "; ".join(r.json()["cookies"])

    try:
        first_answer(caddy, f"{base}/hub/api", tmp_path / "caddy.log")
        ws = "jupyterhub-user-ada-a-101=W; _xsrf=X"  # (the hub's host: paths of an older release)
        for cookie in (
            f"oxa=KINETIC; {ws}",
            f"{ws}; oxa=KINETIC",
            f"a=1; oxa=KINETIC; jupyterhub-hub-login=HUB; {ws}",
            f"__Host-oxa=KINETIC; {ws}; jupyterhub-hub-login=HUB",
        ):
            for path in (
                "/user/ada/a-101/api/contents",
                "/user/ada/a-101/rstudio/",
                "/hub/../user/ada/a-101/",
                "/services/enclave/",
            ):
                got = arrived(path, cookie)
                assert "KINETIC" not in got and "HUB" not in got, (path, cookie, got)
                assert "jupyterhub-user-ada-a-101=W" in got and "_xsrf=X" in got, (path, got)
            # the hub itself still reads both (sign-in from Kinetic, the hub's own session)
            got = arrived("/hub/login", cookie)
            assert "KINETIC" in got, got
        assert "oxa=KINETIC" not in arrived("/user/ada/a-101/", "oxa=KINETIC")

        # a workspace's own host (analysis-<id>.<domain>): no sign-in cookie on any path, and the
        # hub and its services are not there at all
        ws_base = f"https://analysis-101.localhost:{tls_port}"
        own = "jupyterhub-user-analysis-101-a-101=W; _xsrf=X"
        for cookie in (
            f"oxa=KINETIC; {own}; jupyterhub-session-id=SESSION",
            f"jupyterhub-hub-login=HUB; {own}; __Host-oxa=KINETIC",
        ):
            r = requests.get(
                ws_base + "/user/analysis-101/a-101/lab", headers={"Cookie": cookie}, verify=False, timeout=10
            )
            got = "; ".join(r.json()["cookies"])
            assert not any(x in got for x in ("KINETIC", "HUB", "SESSION")), (cookie, got)
            assert "jupyterhub-user-analysis-101-a-101=W" in got and "_xsrf=X" in got, got
            for path in ("/hub/login", "/hub/api/user", "/hub", "/services/enclave/"):
                r = requests.get(ws_base + path, headers={"Cookie": cookie}, verify=False, timeout=10)
                assert r.status_code == 404 and "Not here" in r.text, (path, r.status_code, r.text[:200])
    finally:
        stop_process(caddy)
        stop_process(echo)
