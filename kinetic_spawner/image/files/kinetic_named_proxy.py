"""jupyter-server-proxy with its named servers only (a Jupyter server extension in the workspace image).

jupyter-server-proxy's own extension always adds ``/proxy/<port>/``, ``/proxy/absolute/<port>/``
and ``/proxy/<host>:<port>/``: any port a researcher's code listens on inside the workspace is
then a page on the workspace's URL, and a co-researcher who opens it sends that code their
cookies (issue 7, attack 1). It has no switch for this: ``ServerProxy.host_allowlist`` covers
``<host>:<port>`` but not the bare ``<port>`` routes (jupyter-server-proxy#142, open since 2019).

So the image turns jupyter-server-proxy's extension off (``jupyter_server_config.py``) and loads
this one instead: the same loader minus the arbitrary-port routes — the servers named in
``c.ServerProxy.servers`` (RStudio, where an rserver exists) and the launcher's servers-info and
icon endpoints. Servers announced by other packages' entry points are not loaded either: what a
workspace exposes is what the image's config names. Written against jupyter-server-proxy 4.6
(pinned with the image; ``tests/test_workspace_image.py`` tries both sides).
"""

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.api import IconHandler, ServersInfoHandler
from jupyter_server_proxy.config import ServerProxy, make_handlers


def _jupyter_server_extension_points():
    return [{"module": "kinetic_named_proxy"}]


def _load_jupyter_server_extension(serverapp):
    base_url = serverapp.web_app.settings["base_url"]
    processes = list(ServerProxy(parent=serverapp).servers.values())
    icons = {
        p.name: p.launcher_entry.icon_path
        for p in processes
        if p.launcher_entry.enabled and p.launcher_entry.icon_path
    }
    serverapp.web_app.add_handlers(
        ".*",
        [
            *make_handlers(base_url, processes),
            (
                url_path_join(base_url, "server-proxy/servers-info"),
                ServersInfoHandler,
                {"server_processes": processes},
            ),
            (url_path_join(base_url, "server-proxy/icon/(.*)"), IconHandler, {"icons": icons}),
        ],
    )
    serverapp.log.info(
        "kinetic: proxying only the named servers (%s); /proxy/<port>/ is not served",
        ", ".join(p.name for p in processes) or "none",
    )
