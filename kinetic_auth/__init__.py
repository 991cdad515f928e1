"""Kinetic sign-in for JupyterHub: the SSO cookie, the Kinetic API client, the authenticator."""
from .authenticator import KineticAuthenticator

__all__ = ["KineticAuthenticator"]
