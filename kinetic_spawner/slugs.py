"""Names derived from Kinetic's analysis ids, in one place.

A workspace is the named server ``a-<analysisId>`` (JupyterHub allows 1-30 chars of [a-z0-9-]) of
the hub user ``analysis-<analysisId>``: the workspace belongs to the analysis, not to whichever
researcher opened it first, and every researcher Kinetic puts on the analysis reaches it through a
share. That user is also the workspace's web origin (``analysis-<id>.<hub host>``, see
``kinetic_auth.origins``): one origin per analysis, so code served from one analysis's workspace
can reach nothing of another's in a visitor's browser.

Kinetic's analysis ids are positive integers; anything else is refused rather than mangled,
so two different analyses can never map to the same server, owner, origin or storage.
"""

from __future__ import annotations

import re

PREFIX = "a-"
OWNER_PREFIX = "analysis-"
_ANALYSIS_ID = re.compile(r"^[1-9][0-9]{0,17}$")


class BadAnalysisId(ValueError):
    pass


def check_analysis_id(analysis_id: str | int) -> str:
    text = str(analysis_id).strip()
    if not _ANALYSIS_ID.match(text):
        raise BadAnalysisId(f"{str(analysis_id)[:40]!r} is not a Kinetic analysis id")
    return text


def server_name(analysis_id: str | int) -> str:
    return PREFIX + check_analysis_id(analysis_id)


def _analysis_id_after(prefix: str, name: str) -> str | None:
    if not name or not name.startswith(prefix):
        return None
    try:
        return check_analysis_id(name[len(prefix) :])
    except BadAnalysisId:
        return None


def analysis_id_from_server_name(name: str) -> str | None:
    """The analysis a named server belongs to, or None for any other server name."""
    return _analysis_id_after(PREFIX, name)


def owner_name(analysis_id: str | int) -> str:
    """The hub user that owns the analysis's workspace (never a person: see ``is_workspace_owner``)."""
    return OWNER_PREFIX + check_analysis_id(analysis_id)


def analysis_id_from_owner(name: str) -> str | None:
    """The analysis whose workspaces hub user ``name`` owns, or None for a person."""
    return _analysis_id_after(OWNER_PREFIX, name)


def is_workspace_owner(name: str) -> bool:
    """Whether hub user ``name`` is an analysis's workspace owner rather than a person. Kinetic's
    people are named by uuid, and the authenticator refuses a sign-in under such a name anyway."""
    return name.startswith(OWNER_PREFIX)
