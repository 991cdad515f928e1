"""Jupyter server configuration baked into the Kinetic workspace image
(``/opt/kinetic/venv/etc/jupyter/jupyter_server_config.py``, read by jupyterhub-singleuser).

* R is the only kernel: the enclave runs R, so a workspace offers exactly what the enclave will
  run. The image's Python (ipykernel comes with JupyterLab) is not offered as a kernel: JupyterLab
  4.6's kernel dialog for a console on ``main.r`` ignores the server's default kernel and, finding
  no kernel whose language matches the editor's exactly, preselected the first one, Python.
* A busy kernel counts as activity for the idle culler (``kinetic_busy_activity``).
* Access follows Kinetic: visitors' tokens are re-checked with the hub every 15 s, open
  connections too (``kinetic_session_check``).
* RStudio (jupyter-rsession-proxy) is registered only where an ``rserver`` exists, found the way
  jupyter-rsession-proxy itself looks for it. The image drops the proxy's entry point, which
  would otherwise always add an RStudio launcher tile that leads to a bare 500 page.
* jupyter-server-proxy serves the servers named here and nothing else: its own extension, which
  would also proxy ``/proxy/<port>/`` to any port a researcher's code listens on (and so hand that
  code a co-researcher's cookies), is off; ``kinetic_named_proxy`` loads the named servers alone.
"""

c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

c.MappingKernelManager.default_kernel_name = "ir"
c.KernelSpecManager.allowed_kernelspecs = {"ir"}

# Access follows Kinetic (kinetic_auth/access_review.py): the hub revokes a person's sign-in to this
# workspace when Kinetic takes them off the analysis; the workspace asks the hub about a visitor's
# token at most this many seconds after its last answer (JupyterHub's default is 300), so their
# open session ends within the review's bound.
c.HubOAuth.cache_max_age = 15

# A kernel computing without printing is activity too (kinetic_busy_activity.py): otherwise the
# hub's idle culler stops a workspace in the middle of a long computation.
# jupyter-server-proxy's own extension is replaced by kinetic_named_proxy: named servers only, no
# /proxy/<port>/ (an explicit False here wins over the package's jupyter_server_config.d entry).
c.ServerApp.jpserver_extensions = {
    "kinetic_busy_activity": True,
    "jupyter_server_proxy": False,
    "kinetic_named_proxy": True,
    # open kernel/terminal/RStudio connections are re-checked with the hub on the same period as
    # the token cache above, and closed when the hub no longer accepts their sign-in here
    "kinetic_session_check": True,
}


def _rstudio_server():
    try:
        from jupyter_rsession_proxy import get_rstudio_executable, setup_rserver

        get_rstudio_executable("rserver")
    except (ImportError, FileNotFoundError):
        return None
    return setup_rserver()


_rstudio = _rstudio_server()
if _rstudio is not None:
    c.ServerProxy.servers.update({"rstudio": _rstudio})
