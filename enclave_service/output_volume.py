"""``output/`` of a run on a volume of bounded size and file count.

A run writes its results into a tmpfs mounted by the service for that run alone
(``mount -t tmpfs -o size=…,nr_inodes=…``): when it is full, writes fail inside the container and
the host's disk never sees a byte of it. After the run the service looks at the volume — full, or
a file cut at the per-file size limit (RLIMIT_FSIZE, SIGXFSZ), fails the run in words — and only a
run that passed has its outputs copied to the run's folder on disk (bounded by the same limit) for
the output checks and the reviewers; the volume is then unmounted. A failed run's outputs are gone
with the volume.

The mount needs root (the service runs as root where podman is rootful). Where mounting is not
possible the volume is a plain folder and the limits are only checked after the run (said in the
service log at start-up); ``enforce`` makes that an error instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import proc

log = logging.getLogger("enclave.output")
FULL_MARGIN = 1 << 20  # less free space than this counts as "full"
RUN_UID = RUN_GID = 1010


@dataclass
class OutputLimits:
    max_bytes: int = 256 * 2**20  # all of output/ together
    max_files: int = 1000  # files and folders in output/


@dataclass
class Usage:
    bytes: int
    files: int
    full_bytes: bool
    full_files: bool
    cut: list[str]  # files that reached the per-file size limit


class OutputVolumeError(RuntimeError):
    pass


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


def _walk_usage(path: Path, file_limit: int | None) -> tuple[int, int, list[str]]:
    total = count = 0
    cut = []
    for dirpath, dirnames, filenames in os.walk(path):
        count += len(dirnames)
        for name in filenames:
            p = Path(dirpath, name)
            try:
                st = p.lstat()
            except OSError:
                continue
            count += 1
            total += st.st_size
            if file_limit and st.st_size >= file_limit:
                cut.append(p.relative_to(path).as_posix())
    return total, count, sorted(cut)


class OutputVolume:
    def __init__(self, limits: OutputLimits | None = None, enforce: bool = False):
        self.limits = limits or OutputLimits()
        self.enforce = enforce

    @staticmethod
    def can_mount() -> bool:
        return os.geteuid() == 0

    async def mounted(self, path: Path) -> bool:
        return await asyncio.to_thread(_mounted, Path(path))

    async def create(self, path: Path) -> bool:
        """An empty volume at ``path`` for uid 1010 (idempotent: an existing mount is kept, so a
        run re-attached after a restart keeps what it wrote). True when it is a bounded mount."""
        path = Path(path)
        if await self.mounted(path):
            return True
        if path.exists():
            await asyncio.to_thread(shutil.rmtree, path, True)
        path.mkdir(parents=True)
        if not self.can_mount():
            if self.enforce:
                raise OutputVolumeError("the output volume cannot be mounted (the service is not root)")
            return False
        opts = (
            f"size={self.limits.max_bytes},nr_inodes={self.limits.max_files + 1},mode=0700,"
            f"uid={RUN_UID},gid={RUN_GID},noexec,nosuid,nodev"
        )
        rc, _, err = await proc.run(["mount", "-t", "tmpfs", "-o", opts, "enclave-output", str(path)], 30)
        if rc != 0:
            msg = err.decode(errors="replace").strip()
            if self.enforce:
                raise OutputVolumeError(f"the output volume could not be mounted: {msg}")
            log.warning("output volume not mounted (%s); limits are checked after the run only", msg)
            return False
        return True

    async def usage(self, path: Path, file_size_limit: int | None = None) -> Usage:
        path = Path(path)
        total, count, cut = await asyncio.to_thread(_walk_usage, path, file_size_limit)
        full_bytes = total > self.limits.max_bytes - FULL_MARGIN
        full_files = count >= self.limits.max_files
        if await self.mounted(path):
            st = await asyncio.to_thread(os.statvfs, path)
            full_bytes = full_bytes or st.f_bavail * st.f_frsize < FULL_MARGIN
            full_files = full_files or st.f_favail == 0
        return Usage(total, count, full_bytes, full_files, cut)

    def over_limit_words(self, usage: Usage) -> str:
        """Why the run fails, or '' when the volume is within its limits."""
        if usage.full_bytes:
            return (
                f"output/ reached its limit of {self.limits.max_bytes // 2**20} MiB "
                f"({usage.bytes} bytes written); write aggregates, not data"
            )
        if usage.full_files:
            return f"output/ reached its limit of {self.limits.max_files} files and folders"
        if usage.cut:
            return (
                f"{', '.join(usage.cut[:3])} reached the per-file size limit and was cut short "
                "(file size limit exceeded); the file is incomplete"
            )
        return ""

    async def persist(self, path: Path, dest: Path) -> None:
        """Copy what the run wrote to ``dest`` on disk (links are copied as links, never
        followed; the output checks refuse them), then remove the volume."""
        path, dest = Path(path), Path(dest)
        partial = dest.with_name(dest.name + ".partial")

        def copy():
            for p in (partial, dest):
                if p.exists():
                    shutil.rmtree(p)
            shutil.copytree(path, partial, symlinks=True)
            os.replace(partial, dest)

        await asyncio.to_thread(copy)
        await self.discard(path)

    async def discard(self, path: Path) -> None:
        """Unmount (which frees what was written) and remove the mount point. Idempotent."""
        path = Path(path)
        if await self.mounted(path):
            rc, _, err = await proc.run(["umount", str(path)], 30)
            if rc != 0:
                rc, _, err = await proc.run(["umount", "-l", str(path)], 30)
                if rc != 0:
                    log.warning("could not unmount %s: %s", path, err.decode(errors="replace"))
                    return
        await asyncio.to_thread(shutil.rmtree, path, True)
