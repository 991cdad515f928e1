"""A kernel that is computing counts as activity (a Jupyter server extension in the workspace image).

jupyter_server counts a kernel as active only when it sends a message; an R script that computes
for an hour without printing looks idle, so the hub's idle culler would stop a workspace that is
working. As often as the workspace reports to the hub (``JUPYTERHUB_ACTIVITY_INTERVAL``, at most
every 30 s) this extension looks for busy kernels and, if there is one,
sets a ``*_last_activity`` setting, which jupyter_server's ``last_activity()`` includes (that is
its documented hook for extensions), and jupyterhub-singleuser reports it to the hub.
"""

import datetime
import os

from tornado.ioloop import PeriodicCallback

SETTING = "kinetic_busy_kernels_last_activity"


def _jupyter_server_extension_points():
    return [{"module": "kinetic_busy_activity"}]


def _load_jupyter_server_extension(serverapp):
    kernels = serverapp.kernel_manager
    settings = serverapp.web_app.settings
    interval = min(30.0, float(os.environ.get("JUPYTERHUB_ACTIVITY_INTERVAL") or 300))

    def note_busy_kernels():
        for kernel_id in kernels.list_kernel_ids():
            try:
                busy = kernels.get_kernel(kernel_id).execution_state == "busy"
            except KeyError:  # shut down meanwhile
                continue
            if busy:
                settings[SETTING] = datetime.datetime.now(datetime.UTC)
                return

    PeriodicCallback(note_busy_kernels, interval * 1000).start()
    serverapp.log.info("kinetic: busy kernels count as activity (checked every %.0f s)", interval)
