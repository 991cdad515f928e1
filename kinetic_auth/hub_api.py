"""The hub pages' client for JupyterHub's own public REST API.

The pages under /hub/analysis/... start, find and share workspaces. They do it the way any JupyterHub
client does, through the documented REST API (``/hub/api/users``, ``/hub/api/users/<u>/servers/<s>``,
``/hub/api/shares/<u>/<s>``), rather than by writing JupyterHub's database: the API checks its own
invariants (server names, display names, share scopes) and keeps working across JupyterHub releases.

The calls carry the token of a hub-registered service (``kinetic-hub-pages`` in
hub_config/jupyterhub_config.py) whose role holds only what the pages need:

    list:users, read:servers     which workspaces are running, and whose they are
    admin:users                  make the hub user that owns an analysis's workspace (once)
    start:servers                start a workspace and set its display name (the analysis title)
    shares, read:users:name      share a running workspace with a co-researcher, and revoke shares
    admin:auth_state, tokens,    the access review (``access_review``): ask Kinetic as each person
    delete:servers               in a workspace, revoke their sign-ins there, stop a workspace whose
                                 owner Kinetic no longer puts on the analysis

The token is made afresh each time the hub starts and lives only in the hub process (no file, no
environment variable), so nothing else on the machine can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PAGE_SIZE = 200  # JupyterHub's largest page


class HubAPIError(Exception):
    """The hub's REST API refused or failed a call: ``status`` and JupyterHub's own message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Workspace:
    """An active (starting or running) named server, as the REST API describes it."""

    owner: str
    name: str
    display_name: str
    ready: bool
    pending: str | None
    url: str
    opened_by: str = ""  # the researcher who started it (the start's user_options)


def _q(part: str) -> str:
    return quote(part, safe="")


class HubAPI:
    def __init__(self, api_url: str, token: str, timeout: float = 30):
        if not token:
            raise HubAPIError(500, "the hub pages have no API token: set KineticAuthenticator.hub_api_token")
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, body=None, accept: str = "application/json"):
        """(status, decoded JSON or None). Raises HubAPIError for any status >= 400."""
        req = HTTPRequest(
            f"{self.api_url}/{path.lstrip('/')}",
            method=method,
            headers={
                "Authorization": f"token {self.token}",
                "Accept": accept,
                **({"Content-Type": "application/json"} if body is not None else {}),
            },
            body=json.dumps(body)
            if body is not None
            else (b"" if method in ("POST", "PUT", "PATCH") else None),
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            message = e.message or ""
            if e.response is not None and e.response.body:
                try:
                    message = json.loads(e.response.body).get("message") or message
                except (ValueError, AttributeError):
                    pass
            raise HubAPIError(e.code, message) from None
        data = None
        if resp.body and resp.headers.get("Content-Type", "").startswith("application/"):
            data = json.loads(resp.body)
        return resp.code, data

    # -- workspaces ---------------------------------------------------------------------------
    async def active_servers(self, names) -> dict[str, Workspace]:
        """server name -> its active workspace, for the given names, whoever owns it.

        One paginated listing of the users with an active server (JupyterHub has no query by
        server name); the caller holds the per-analysis lock, so the answer cannot go stale
        between this call and a start or join.
        """
        wanted = set(names)
        return {ws.name: ws for ws in await self.active_servers_all() if ws.name in wanted}

    async def active_servers_all(self) -> list[Workspace]:
        """Every active named server, whoever owns it (for the access review)."""
        found, offset = [], 0
        while True:
            query = urlencode({"state": "active", "limit": PAGE_SIZE, "offset": offset})
            _, page = await self.request(
                "GET", f"users?{query}", accept="application/jupyterhub-pagination+json"
            )
            for user in page["items"]:
                for name, server in (user.get("servers") or {}).items():
                    if name:
                        found.append(
                            Workspace(
                                owner=user["name"],
                                name=name,
                                display_name=server.get("display_name") or name,
                                ready=bool(server.get("ready")),
                                pending=server.get("pending"),
                                url=server.get("url", ""),
                                opened_by=str((server.get("user_options") or {}).get("opened_by") or ""),
                            )
                        )
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt:
                return found
            offset = nxt["offset"]

    async def ensure_user(self, name: str) -> None:
        """Make hub user ``name`` unless it exists (an analysis's workspace owner)."""
        try:
            await self.request("POST", f"users/{_q(name)}")
        except HubAPIError as e:
            if e.status != 409:  # 409: exists already
                raise

    async def stop_server(self, owner: str, name: str) -> None:
        """Stop owner's server ``name``, keeping it (and its home) for the next start."""
        try:
            await self.request("DELETE", f"users/{_q(owner)}/servers/{_q(name)}")
        except HubAPIError as e:
            if e.status not in (400, 404):  # already stopped or stopping
                raise

    async def start_server(self, owner: str, name: str, display_name: str, user_options: dict) -> int:
        """Start (creating if needed) a named server; sets its display name too. 201 ready, 202 pending."""
        status, _ = await self.request(
            "POST",
            f"users/{_q(owner)}/servers/{_q(name)}",
            {"display_name": display_name, "user_options": user_options},
        )
        return status

    async def server(self, owner: str, name: str) -> dict:
        return (await self.request("GET", f"users/{_q(owner)}/servers/{_q(name)}"))[1]

    # -- shares ------------------------------------------------------------------------------
    async def grant_share(self, owner: str, name: str, user: str) -> dict:
        """Give ``user`` access (only access) to owner's server ``name``."""
        return (await self.request("POST", f"shares/{_q(owner)}/{_q(name)}", {"user": user}))[1]

    async def revoke_share(self, owner: str, name: str, user: str) -> None:
        """Take every permission on owner's server ``name`` away from ``user``."""
        await self.request("PATCH", f"shares/{_q(owner)}/{_q(name)}", {"user": user})

    async def shared_with(self, owner: str, name: str) -> list[str]:
        """The users owner's server ``name`` is shared with (we never share with groups)."""
        users, offset = [], 0
        while True:
            query = urlencode({"limit": PAGE_SIZE, "offset": offset})
            _, page = await self.request(
                "GET",
                f"shares/{_q(owner)}/{_q(name)}?{query}",
                accept="application/jupyterhub-pagination+json",
            )
            users += [item["user"]["name"] for item in page["items"] if item.get("user")]
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt:
                return users
            offset = nxt["offset"]

    # -- people ------------------------------------------------------------------------------
    async def auth_state(self, user: str) -> dict | None:
        """What the authenticator keeps for ``user`` (their Kinetic sign-in), or None."""
        try:
            _, model = await self.request("GET", f"users/{_q(user)}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return model.get("auth_state")

    async def tokens(self, user: str) -> list[dict]:
        return (await self.request("GET", f"users/{_q(user)}/tokens"))[1]["api_tokens"]

    async def revoke_token(self, user: str, token_id: str) -> None:
        try:
            await self.request("DELETE", f"users/{_q(user)}/tokens/{_q(token_id)}")
        except HubAPIError as e:
            if e.status != 404:
                raise

    async def revoke_all_shares(self, owner: str, name: str) -> None:
        """Drop every share of owner's server ``name``; a server that does not exist has none."""
        try:
            await self.request("DELETE", f"shares/{_q(owner)}/{_q(name)}")
        except HubAPIError as e:
            if e.status != 404:
                raise
