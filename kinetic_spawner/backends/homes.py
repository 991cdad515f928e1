"""Analysis homes kept as directories on the hub's machine (container and process backends).

One home per analysis, ``<workspaces_root>/<analysisId>``, mode 0700, owned by the workspace user.
Homes are never deleted here: stopping a workspace removes the compute and keeps the data.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from traitlets import Unicode, default

from . import WorkspaceBackend


class HomesOnThisHost(WorkspaceBackend):
    """Base of the backends whose analysis homes are directories on this machine."""

    workspaces_root = Unicode(
        config=True,
        help="""Directory holding one home per analysis, ``<workspaces_root>/<analysisId>`` (mode
        0700, owned by the workspace user). Homes are never deleted by the spawner: stopping a
        workspace removes the compute and keeps the data. Default: ``state/workspaces`` under the
        hub's working directory. (``c.HomesOnThisHost.workspaces_root`` sets it for both the
        container and the process backend.)""",
    )

    @default("workspaces_root")
    def _default_workspaces_root(self):
        return os.path.abspath(os.path.join("state", "workspaces"))

    home: str = ""

    @property
    def root(self) -> Path:
        return Path(self.workspaces_root)

    async def prepare_home(self, analysis_id: str, owner: tuple[int, int] | None = None) -> str:
        """Create (or find) the analysis home, mode 0700, owned by ``owner`` (uid, gid) if given."""
        home = self.root / analysis_id

        def make():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            home.mkdir(exist_ok=True, mode=0o700)
            if owner is not None:
                os.chown(home, *owner)
            os.chmod(home, 0o700)  # mkdir's mode is filtered by the umask; the home must be 0700
            (self.root / "logs").mkdir(exist_ok=True, mode=0o700)

        await asyncio.to_thread(make)
        self.home = str(home)
        return self.home

    def home_path(self) -> str:
        return self.home

    def log_path(self, analysis_id: str) -> Path:
        return self.root / "logs" / f"{analysis_id}.log"
