"""Run a hub-managed service so that it ends when the hub ends, however the hub ends.

    python -m hub_config.die_with_hub -- COMMAND [ARGS...]

JupyterHub starts its managed services (the idle culler, the enclave service, the mail sink) in
sessions of their own, so a hub that is SIGKILLed (an out-of-memory kill, a crashed host process)
leaves them running: the restarted hub's enclave service then dies with "Address already in
use" while the orphan goes on serving with the old hub's credentials. This wrapper asks the kernel
to send the service SIGTERM when its parent (the hub) dies (``PR_SET_PDEATHSIG``, which survives
``exec``), then becomes the service. Linux only, like the rest of the kit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m hub_config.die_with_hub -- COMMAND [ARGS...]")
    hub = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        sys.exit(f"die_with_hub: prctl failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != hub:  # the hub died before the request took effect
        sys.exit(0)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
