"""The one place Kinetic Workspaces relies on JupyterHub behaviour that is not a public API.

JupyterHub 6 has no public way to say "this person may enter that server without the OAuth
'Authorize access' page". Its authorization handler skips the page for a client id listed in the
tornado setting ``oauth_no_confirm_list`` (filled from services' ``oauth_no_confirm``, and changed at
run time by JupyterHub itself when services are added through the API). A co-researcher joins a
workspace only after Kinetic said they work on the analysis together, and the share still limits what
they reach, so the page would only ask them to confirm what Kinetic already decided.

Being on the list grants nothing by itself: access still needs the share (``access:servers``).

``tests/test_hub_adapter.py`` calls JupyterHub's own authorization check with this adapter's effect
and fails when a JupyterHub release changes it; update this module (and only this one) then.
"""

from __future__ import annotations

NO_CONFIRM_SETTING = "oauth_no_confirm_list"


def skip_oauth_confirmation(settings: dict, oauth_client_id: str) -> None:
    """Let people who have access to this OAuth client (a workspace) in without the confirm page."""
    settings.setdefault(NO_CONFIRM_SETTING, set()).add(oauth_client_id)
