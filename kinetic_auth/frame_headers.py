"""No page of ours may be framed by another page: the headers, on every response of a tornado app.

``refuse_framing(app)`` adds an output transform to the application, so every response it sends —
pages, API answers, redirects, error pages, tornado's own 404, handlers from other packages such as
JupyterHub's OAuth callback — carries ``Content-Security-Policy: frame-ancestors 'none'`` and
``X-Frame-Options: DENY`` (for browsers without CSP level 2). A policy a handler already set is
kept and gets ``frame-ancestors`` appended unless it has one.

``'none'`` rather than ``'self'``: none of our pages frames another, and today the hub, the enclave
and the workspaces share one origin, so ``'self'`` would let a page a researcher's code serves
from a workspace frame a reviewer's enclave page and trick clicks on it. JupyterHub's own pages
send ``frame-ancestors 'none'`` since 4.1; the enclave service and the Kinetic stand-in match it.
"""

from __future__ import annotations

from tornado import httputil, web

FRAME_ANCESTORS = "frame-ancestors 'none'"
X_FRAME_OPTIONS = "DENY"


class NoFraming(web.OutputTransform):
    def transform_first_chunk(
        self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        policy = headers.get("Content-Security-Policy", "").strip().rstrip(";")
        if not policy:
            headers["Content-Security-Policy"] = FRAME_ANCESTORS
        elif "frame-ancestors" not in policy.lower():
            headers["Content-Security-Policy"] = f"{policy}; {FRAME_ANCESTORS}"
        if "X-Frame-Options" not in headers:
            headers["X-Frame-Options"] = X_FRAME_OPTIONS
        return status_code, headers, chunk


def refuse_framing(app: web.Application) -> web.Application:
    app.add_transform(NoFraming)
    return app
