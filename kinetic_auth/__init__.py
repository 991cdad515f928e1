"""Kinetic sign-in for JupyterHub: the SSO cookie (cookie), the Kinetic API client (kinetic),
the authenticator (authenticator), the hub pages (handlers) and a stand-in for Kinetic (standin)."""
