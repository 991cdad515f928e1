"""The one JupyterHub behaviour we use without a public API (kinetic_auth/hub_adapter.py).

These call JupyterHub's own OAuth authorization check; they fail when a JupyterHub release changes
what the adapter relies on, which is the signal to update that module."""

from types import SimpleNamespace

from jupyterhub.apihandlers.auth import OAuthAuthorizeHandler

from kinetic_auth.hub_adapter import skip_oauth_confirmation


class _NoTokens:
    """Stands in for the database: the visitor has never authorized this client before."""

    def query(self, *_):
        return self

    def filter_by(self, **_):
        return []


def _needs_confirm(settings, client_id="jupyterhub-user-ada-a-101"):
    handler = SimpleNamespace(settings=settings, db=_NoTokens(), log=SimpleNamespace(debug=print))
    grace = SimpleNamespace(id=2, name="grace", spawners={})  # Grace owns no server of her own
    client = SimpleNamespace(identifier=client_id)
    return OAuthAuthorizeHandler.needs_oauth_confirm(
        handler, grace, client, ["access:servers!server=ada/a-101"]
    )


def test_a_joined_workspace_needs_no_confirmation_page():
    settings = {}
    assert _needs_confirm(settings) is True  # JupyterHub asks by default
    skip_oauth_confirmation(settings, "jupyterhub-user-ada-a-101")
    assert _needs_confirm(settings) is False
    assert _needs_confirm(settings, "jupyterhub-user-ada-a-102") is True  # only that workspace


def test_the_hub_keeps_the_setting_it_starts_with():
    """JupyterHub builds the no-confirm set at start-up and reads the same object per request;
    the adapter adds to it in place."""
    import inspect

    from jupyterhub import app

    assert "oauth_no_confirm_list=oauth_no_confirm_list" in inspect.getsource(
        app.JupyterHub.init_tornado_settings
    )
    settings = {"oauth_no_confirm_list": set()}
    same = settings["oauth_no_confirm_list"]
    skip_oauth_confirmation(settings, "x")
    assert settings["oauth_no_confirm_list"] is same and "x" in same


def test_the_workspace_login_check_stands_where_jupyterhub_authorizes():
    """WorkspaceLoginCheck replaces JupyterHub's handler on JupyterHub's own route, finds the client
    the way JupyterHub does, and reads the server from it: each of these is a JupyterHub detail."""
    import inspect

    from jupyterhub import orm
    from jupyterhub.apihandlers import auth

    from kinetic_auth.hub_adapter import AUTHORIZE_ROUTE, WorkspaceLoginCheck

    assert (AUTHORIZE_ROUTE, OAuthAuthorizeHandler) in auth.default_handlers
    assert issubclass(WorkspaceLoginCheck, OAuthAuthorizeHandler)
    assert "fetch_by_client_id" in inspect.getsource(OAuthAuthorizeHandler.get)
    assert "client_id" in inspect.getsource(OAuthAuthorizeHandler.get)
    assert hasattr(orm.OAuthClient, "spawner") and hasattr(orm.Spawner, "user")
