"""Run code in a workspace's kernel through the workspace server's own API, as a researcher's
browser does: start a kernel (REST), send an execute_request on its websocket, collect the output.

The security tests use it to attack from *inside* a workspace with nothing but what a researcher
has: her own R session.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


@dataclass
class Result:
    stdout: str
    stderr: str
    error: str  # "" or "ename: evalue"
    status: str  # "ok", "error", or "dead" (the kernel went away, e.g. killed for its memory)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


class Kernel:
    """One kernel of a workspace, reached through the proxy at ``server_url`` (…/user/<u>/<name>/)."""

    def __init__(self, server_url: str, token: str, name: str = "ir"):
        self.server_url = server_url.rstrip("/") + "/"
        self.headers = {"Authorization": f"token {token}"}
        r = requests.post(
            self.server_url + "api/kernels", json={"name": name}, headers=self.headers, timeout=60
        )
        r.raise_for_status()
        self.id = r.json()["id"]
        self.name = r.json()["name"]

    def run(self, code: str, timeout: float = 120) -> Result:
        return asyncio.run(self._run(code, timeout))

    def submit(self, code: str, watch: float = 20) -> str:
        """Start ``code``, watch it for ``watch`` seconds, and hang up: the kernel computes on with
        nobody watching. Returns what it printed meanwhile."""
        try:
            result = self.run(code, timeout=watch)
        except TimeoutError as still_running:
            return str(still_running)
        raise AssertionError(f"the code finished within {watch} s: {result}")

    async def _execute(self, code: str):
        ws_url = self.server_url.replace("http", "ws", 1) + f"api/kernels/{self.id}/channels"
        conn = await websocket_connect(HTTPRequest(ws_url, headers=self.headers), max_message_size=64 << 20)
        msg_id = uuid.uuid4().hex
        await conn.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        return conn, msg_id

    async def _run(self, code: str, timeout: float) -> Result:
        conn, msg_id = await self._execute(code)
        out, err, error, status = [], [], "", "ok"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(
                        f"kernel did not finish within {timeout} s; output so far: {''.join(out)[-500:]}"
                    )
                try:
                    raw = await asyncio.wait_for(conn.read_message(), left)
                except TimeoutError:
                    raise TimeoutError(
                        f"kernel did not finish within {timeout} s; output so far: {''.join(out)[-500:]}"
                    ) from None
                if raw is None:
                    return Result("".join(out), "".join(err), error or "connection closed", "dead")
                msg = json.loads(raw)
                kind, content = msg["msg_type"], msg.get("content", {})
                if kind == "status" and content.get("execution_state") in ("dead", "restarting"):
                    # the kernel died (e.g. killed for its memory); the server says so unprompted
                    return Result("".join(out), "".join(err), error, "dead")
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if kind == "stream":
                    (out if content.get("name") == "stdout" else err).append(content.get("text", ""))
                elif kind in ("execute_result", "display_data"):
                    out.append(content.get("data", {}).get("text/plain", "") + "\n")
                elif kind == "error":
                    error, status = f"{content.get('ename')}: {content.get('evalue')}", "error"
                elif kind == "status" and content.get("execution_state") == "idle":
                    return Result("".join(out), "".join(err), error, status)
        finally:
            conn.close()

    def state(self) -> str:
        """The kernel's execution state as its server reports it (busy, idle, ...)."""
        r = requests.get(self.server_url + f"api/kernels/{self.id}", headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()["execution_state"]

    def shutdown(self) -> None:
        requests.delete(self.server_url + f"api/kernels/{self.id}", headers=self.headers, timeout=30)
