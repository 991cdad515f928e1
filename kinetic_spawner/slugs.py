"""Names derived from Kinetic's analysis ids, in one place.

A workspace is the named server ``a-<analysisId>`` (JupyterHub allows 1-30 chars of [a-z0-9-]).
Kinetic's analysis ids are positive integers; anything else is refused rather than mangled,
so two different analyses can never map to the same server or the same storage.
"""

from __future__ import annotations

import re

PREFIX = "a-"
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


def analysis_id_from_server_name(name: str) -> str | None:
    """The analysis a named server belongs to, or None for any other server name."""
    if not name or not name.startswith(PREFIX):
        return None
    try:
        return check_analysis_id(name[len(PREFIX) :])
    except BadAnalysisId:
        return None
