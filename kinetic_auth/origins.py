"""Web origins: the hub on its own, each analysis's workspace on its own.

A workspace serves whatever its researchers' code serves, and several researchers open it. In a
browser, what decides what a page may read and act on is its origin (scheme, host, port). So:

    http(s)://<hub host>/hub/...                   the hub's pages, its API, the enclave service
    http(s)://analysis-<id>.<hub host>/user/...    analysis <id>'s workspace (and nothing else)

This is JupyterHub's own ``subdomain_host`` (one host per hub *user*) with ``subdomain_hook`` below.
The workspace's hub user is the analysis (``kinetic_spawner.slugs.owner_name``), so it is one origin
per analysis, never per researcher: with one origin per researcher, a page served by analysis 101's
workspace, opened by Grace, would share an origin with every other workspace of the same owner, among
them analyses Grace is on but 101's other researchers are not.

What that gives, with the hub's cookies host-only on the hub's host (JupyterHub's default; Kinetic's
cookie too in the local set-up, and stripped by the front proxy in production, ``deploy/Caddyfile``):

* a page served from a workspace gets none of its visitor's hub or Kinetic cookies, and its
  ``fetch('/hub/...')`` goes to the workspace's own host, where nobody is signed in;
* a workspace page cannot read another analysis's workspace (another origin), nor the hub's pages;
* signing in to the hub is refused on a workspace's host (``is_workspace_host``), so no script on a
  workspace host can get a hub session there even where a Kinetic cookie does reach it.

Locally the hub host is ``localhost``: Chromium and Firefox resolve ``*.localhost`` to loopback
without any DNS set-up; in production, a wildcard DNS record and certificate for the hub's host.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from jupyterhub.utils import subdomain_hook_idna

from kinetic_spawner import slugs


def subdomain_hook(name: str, domain: str, kind: str) -> str:
    """``JupyterHub.subdomain_hook``: an analysis's workspace owner → ``analysis-<id>.<domain>``;
    services (the enclave, the culler) stay on the hub's own host; anyone else as JupyterHub would."""
    if kind == "service":
        return domain
    if slugs.analysis_id_from_owner(name) is not None:
        return f"{name}.{domain}"  # [a-z0-9-], a valid DNS label as it is
    return subdomain_hook_idna(name, domain, kind)


def check_public_url(url: str) -> str:
    """The hub's public URL, as ``subdomain_host`` needs it: scheme://host[:port] with a host name
    under which subdomains can exist (not an IP address). Raises ValueError in words otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the hub's public URL must look like https://workspaces.example.org, not {url!r}")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        pass
    else:
        raise ValueError(
            f"the hub's public URL {url!r} is an IP address: each analysis's workspace is served from "
            "its own subdomain of the hub's host name, so use a name (locally http://localhost:<port>)"
        )
    if parts.path not in ("", "/"):
        raise ValueError(f"the hub's public URL must have no path, not {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def on_host(url: str, public_url: str) -> str:
    """``url`` with a loopback address replaced by ``public_url``'s host name (the local stand-in as
    browsers reach it: a cookie it sets on localhost is the hub's to read, port aside)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        return url
    netloc = urlsplit(public_url).hostname + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def is_workspace_host(request_host: str, subdomain_host: str) -> bool:
    """Whether a request's Host is a workspace's (a subdomain of the hub's host). Any other name
    (the hub's own, or its address as an operator or a health check uses it) is not."""
    if not subdomain_host:
        return False
    hostname = urlsplit(f"//{request_host}").hostname or ""
    return hostname.endswith("." + (urlsplit(subdomain_host).hostname or "").lower())
