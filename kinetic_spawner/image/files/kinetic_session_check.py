"""Open connections end when their sign-in does (a Jupyter server extension in the workspace image).

A browser's kernel, terminal or RStudio connection is a websocket, and jupyter_server checks who
opens one only once, when it opens. When Kinetic takes a researcher off an analysis, the hub revokes
their sign-ins to its workspace (kinetic_auth/access_review.py): new requests are refused at the next
token check, but an open connection would go on until it reconnects. So every
``HubOAuth.cache_max_age`` seconds this extension asks again about every open websocket of this
server, with the token that opened it, through jupyterhub-singleuser's own ``HubOAuth`` (bypassing
its cache, so the answer is the hub's now: one small request per open connection per period), and
closes those the hub no longer accepts for this workspace. If the hub cannot be asked (restarting), connections are left open:
workspaces outlive hub restarts by design, and the hub's answer is what decides.

The one hook: tornado's ``WebSocketHandler.get`` (every websocket handler, jupyter_server's, the
terminals' and jupyter-server-proxy's, opens through it) notes the handler in a weak set.
"""

import weakref

from tornado.ioloop import PeriodicCallback
from tornado.websocket import WebSocketHandler

OPEN: "weakref.WeakSet[WebSocketHandler]" = weakref.WeakSet()
CLOSE_CODE = 4403  # application code: "your access to this workspace ended"


def _jupyter_server_extension_points():
    return [{"module": "kinetic_session_check"}]


def _note_open_websockets():
    original = WebSocketHandler.get
    if getattr(original, "_kinetic_noted", False):
        return

    async def get(self, *args, **kwargs):
        OPEN.add(self)
        return await original(self, *args, **kwargs)

    get._kinetic_noted = True
    WebSocketHandler.get = get


async def _still_allowed(hub_auth, handler) -> bool | None:
    """True/False from the hub; None when the hub could not be asked."""
    token = hub_auth.get_token(handler)
    if not token:
        return False
    try:
        model = await hub_auth.user_for_token(
            token, use_cache=False, session_id=hub_auth.get_session_id(handler), sync=False
        )
    except Exception:
        return None
    return bool(model) and bool(hub_auth.check_scopes(hub_auth.access_scopes, model))


def _load_jupyter_server_extension(serverapp):
    hub_auth = getattr(serverapp.identity_provider, "hub_auth", None)
    if hub_auth is None:
        serverapp.log.warning("kinetic: not under JupyterHub; open connections are not re-checked")
        return
    _note_open_websockets()

    async def recheck():
        for handler in list(OPEN):
            if handler.ws_connection is None:  # closed already
                OPEN.discard(handler)
                continue
            allowed = await _still_allowed(hub_auth, handler)
            if allowed is False:
                user = getattr(handler, "current_user", None)
                serverapp.log.warning(
                    "kinetic: closing %s's connection to %s: the hub no longer accepts their sign-in here",
                    getattr(user, "username", None) or "someone",
                    handler.request.path,
                )
                handler.close(CLOSE_CODE, "your access to this workspace has ended")
                OPEN.discard(handler)

    every = max(5, int(hub_auth.cache_max_age))
    PeriodicCallback(recheck, every * 1000).start()
    serverapp.log.info("kinetic: open connections re-checked with the hub every %d s", every)
