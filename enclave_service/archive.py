"""Snapshot of an analysis home as a deterministic tar+zstd archive, and its safe extraction.

The archive is the unit the enclave works on: it is fingerprinted (sha256), code-checked, built and run.
So it must be (1) deterministic — the same tree always gives the same bytes, so the fingerprint means
"same submission"; (2) consistent — a file that changes while it is read makes the snapshot a lie (W6),
so such a file is detected, the snapshot retried once, then refused; (3) safe to open — extraction
validates every member before it writes a single byte, because an archive is researcher-controlled input.

Entries live under ``archive/`` (as in the original). What is left out and why (``DEFAULT_EXCLUDE``):

- ``.git`` and ``.cache`` folders, ``*.log`` files: as the original did (not inputs of a run; can be large).
- ``.local/share/rstudio``, ``.Rproj.user``, ``.local/share/jupyter``: RStudio/Jupyter session state
  (editor buffers, kernel connection files with their HMAC keys). Written continuously while the workspace
  runs, so it would trip the changing-file check, and it is not an input of the run.
- ``.local/share/renv`` and ``renv/library``, ``renv/staging``: the renv package cache and the project
  library (whose entries are symlinks into that cache). The enclave image restores packages from
  ``renv.lock``; shipping the binaries would only smuggle native code past the code checks.
- ``.Renviron`` and ``.Rhistory``: ``.Renviron`` holds the analysis' *synthetic-data* API key. A run needs
  no key at all (the service stages the real data as files), so the synthetic key never needs to enter
  the enclave, an image layer or the archive store (W3). ``.Rhistory`` is typed console input (it can hold pasted secrets) and is
  not an input of the run.

Symlinks are refused, in-tree ones too: a symlink is either an escape (``data -> /etc``) or an alias that
makes the archive depend on how it is read; a researcher can replace it by a copy. Devices, fifos and
sockets are refused. Hard links are stored as ordinary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import shutil
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

ROOT = "archive"
# Fixed metadata so that only names, modes and contents decide the bytes of the archive.
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z; 0 makes some tools warn about "implausibly old" times
ZSTD_LEVEL = 6
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "**/.git/",
    "**/.cache/",
    "**/*.log",
    ".local/share/rstudio/",
    "**/.Rproj.user/",
    ".local/share/jupyter/",
    "**/.ipynb_checkpoints/",
    ".local/share/renv/",
    "**/renv/library/",
    "**/renv/staging/",
    ".Renviron",
    ".Rhistory",
    "**/.Rhistory",
)
CHUNK = 1 << 20


class ArchiveError(ValueError):
    """A refusal a researcher can read: what is wrong, with which file, and what to do."""


@dataclass
class ArchiveLimits:
    """Bounds on what one submission may hold (uncompressed)."""

    max_total_bytes: int = 200 * 2**20
    max_files: int = 20000
    max_file_bytes: int = 100 * 2**20
    # pax extended headers and GNU long names are read whole into memory by tarfile: bounded
    # before they are read (a 5 KB archive can announce a 150 MiB header)
    max_header_bytes: int = 64 * 2**10
    # zstd frames may ask for a window of up to 2 GiB of memory; ours use far less
    max_window_bytes: int = 2**27


DEFAULT_LIMITS = ArchiveLimits()  # the defaults, shared read-only by callers that pass none


@dataclass
class ArchiveInfo:
    """Facts about an archive. ``path`` is always the archive file (also after extraction)."""

    path: Path
    sha256: str  # of the compressed archive: the submission's fingerprint
    bytes: int  # compressed size
    files: int  # regular files (directories not counted)
    total_bytes: int  # uncompressed size of those files


class _FileChanged(Exception):
    """Internal: ``args[0]`` is the file that changed while it was read."""


def _excluded(rel: str, is_dir: bool, patterns: tuple[str, ...]) -> bool:
    """Match ``rel`` (posix, relative) against gitignore-like patterns: a trailing ``/`` means a
    directory; ``**/`` means "at any depth"; otherwise the pattern is anchored at the tree's top."""
    for pat in patterns:
        if pat.endswith("/") and not is_dir:
            continue
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            tail, parts = pat[3:], rel.split("/")
            if fnmatch.fnmatchcase("/".join(parts[-(tail.count("/") + 1) :]), tail):
                return True
        elif fnmatch.fnmatchcase(rel, pat):
            return True
    return False


def _walk(src: Path, exclude: tuple[str, ...], limits: ArchiveLimits) -> list[tuple[str, os.stat_result]]:
    """Sorted list of (relative path, lstat) for every directory and file to archive; refusals early."""
    out: list[tuple[str, os.stat_result]] = []
    files = total = 0

    def visit(directory: Path, prefix: str) -> None:
        nonlocal files, total
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise ArchiveError(f"cannot read folder {prefix or '.'}: {e.strerror}") from None
        for name in names:
            rel = f"{prefix}{name}"
            st = os.lstat(directory / name)
            mode = st.st_mode
            if _excluded(rel, stat.S_ISDIR(mode), exclude):
                continue
            if stat.S_ISLNK(mode):
                raise ArchiveError(
                    f"{rel} is a symbolic link (to {os.readlink(directory / name)}); links are "
                    "not allowed in a submission — replace it by a copy of the file or remove it"
                )
            if stat.S_ISDIR(mode):
                out.append((rel, st))
                visit(directory / name, rel + "/")
            elif stat.S_ISREG(mode):
                if st.st_size > limits.max_file_bytes:
                    raise ArchiveError(
                        f"{rel} is {st.st_size} bytes; a file may be at most {limits.max_file_bytes} bytes"
                    )
                files, total = files + 1, total + st.st_size
                if files > limits.max_files:
                    raise ArchiveError(f"too many files (more than {limits.max_files}) at {rel}")
                if total > limits.max_total_bytes:
                    raise ArchiveError(
                        f"the analysis is larger than {limits.max_total_bytes} bytes (at {rel})"
                    )
                out.append((rel, st))
            else:
                kind = "a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                raise ArchiveError(f"{rel} is {kind}; only regular files and folders can be submitted")

    visit(src, "")
    return out


class _Hashing:
    """File wrapper that hashes and counts the bytes going through it (either way)."""

    def __init__(self, fh):
        self.fh, self.h, self.n = fh, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.fh.write(b)

    def read(self, size: int = -1) -> bytes:
        b = self.fh.read(size)
        self.h.update(b)
        self.n += len(b)
        return b

    def flush(self) -> None:
        self.fh.flush()


def _tarinfo(name: str, st: os.stat_result, is_dir: bool) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = FIXED_MTIME, 0, 0, "", ""
    if is_dir:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.type, ti.size = tarfile.REGTYPE, st.st_size
        ti.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return ti


def _add_file(tf: tarfile.TarFile, path: Path, rel: str, st: os.stat_result) -> None:
    """Add one file, proving it did not change while read (size, mtime, ctime, inode before and after)."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise ArchiveError(f"cannot read {rel}: {e.strerror}") from None
    with fh:
        before = os.fstat(fh.fileno())
        key = lambda s: (s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)  # noqa: E731
        if key(before)[:2] != (st.st_size, st.st_mtime_ns) or before.st_ino != st.st_ino:
            raise _FileChanged(rel)
        try:
            tf.addfile(_tarinfo(f"{ROOT}/{rel}", before, False), fh)
        except OSError:  # tarfile: "unexpected end of data" when the file shrank while read
            raise _FileChanged(rel) from None
        # grew, or touched, or replaced by a rename while read
        if fh.read(1) or key(os.fstat(fh.fileno())) != key(before) or key(os.stat(path)) != key(before):
            raise _FileChanged(rel)


def _create_once(src: Path, dest: Path, limits: ArchiveLimits, exclude: tuple[str, ...]) -> ArchiveInfo:
    entries = _walk(src, exclude, limits)
    tmp = dest.with_name(f".{dest.name}.partial")
    files = total = 0
    try:
        with open(tmp, "wb") as raw:
            hw = _Hashing(raw)
            # threads=-1: one zstd worker per core. zstd's multi-threaded mode gives the same bytes
            # for any worker count, so the archive's sha256 stays a fingerprint across machines.
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            with cctx.stream_writer(hw, closefd=False) as zw:
                with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    tf.addfile(_tarinfo(ROOT, os.stat(src), True))
                    for rel, st in entries:
                        if stat.S_ISDIR(st.st_mode):
                            tf.addfile(_tarinfo(f"{ROOT}/{rel}", st, True))
                        else:
                            _add_file(tf, src / rel, rel, st)
                            files += 1
                            total += st.st_size
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return ArchiveInfo(path=dest, sha256=hw.h.hexdigest(), bytes=hw.n, files=files, total_bytes=total)


def create_archive_sync(
    src_dir,
    dest_path,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    retry_delay: float = 1.0,
) -> ArchiveInfo:
    """Blocking body of :func:`create_archive` (for threads and scripts)."""
    src, dest = Path(src_dir), Path(dest_path)
    if not src.is_dir():
        raise ArchiveError(f"nothing to archive: {src} is not a folder")
    for attempt in (1, 2):
        try:
            return _create_once(src, dest, limits, exclude)
        except _FileChanged as e:
            if attempt == 2:
                raise ArchiveError(
                    f"{e.args[0]} kept changing while the analysis was archived; wait until it "
                    "is no longer being written (save and close it), then submit again"
                ) from None
            time.sleep(retry_delay)
    raise AssertionError("unreachable")


async def create_archive(
    src_dir,
    dest_path,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    *,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    retry_delay: float = 1.0,
) -> ArchiveInfo:
    """Archive ``src_dir`` into ``dest_path`` (written atomically). Runs in a worker thread.

    Raises ArchiveError (readable) for links, special files, exceeded limits or a file that changed
    during both attempts."""
    return await asyncio.to_thread(create_archive_sync, src_dir, dest_path, limits, exclude, retry_delay)


# ----------------------------------------------------------------------------------------------- extract


class _BoundedReader:
    """Decompressed stream that refuses to yield more than ``cap`` bytes (zstd/tar bomb guard)."""

    def __init__(self, reader, cap: int):
        self.r, self.cap, self.n, self.exceeded = reader, cap, 0, False

    def read(self, size: int = -1) -> bytes:
        b = self.r.read(min(size if size is not None and size >= 0 else CHUNK, self.cap + 1 - self.n))
        self.n += len(b)
        if self.n > self.cap:
            self.exceeded = True  # tarfile turns errors inside header reads into ReadError
            raise ArchiveError(f"the archive expands to more than its limit of {self.cap} bytes")
        return b


_HEADER_TYPES = {
    tarfile.XHDTYPE: "a pax extended header",
    tarfile.XGLTYPE: "a pax global header",
    tarfile.SOLARIS_XHDTYPE: "a pax extended header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long name",
    tarfile.GNUTYPE_LONGLINK: "a GNU long link name",
}


def _bounded_tarinfo(max_header: int) -> type:
    """A TarInfo whose header extensions are refused, by their announced size, before tarfile
    reads them into memory."""

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_):
            what = _HEADER_TYPES.get(self.type)
            if what and self.size > max_header:
                raise ArchiveError(
                    f"refused: the archive has {what} of {self.size} bytes (at most {max_header} are read)"
                )
            return super()._proc_member(tarfile_)

    return BoundedTarInfo


def _members(archive: Path, limits: ArchiveLimits):
    """Yield (member, relative path or None for the root, tarfile) while hashing; caller drains."""
    # Headers and padding add at most ~1.5 KiB per entry on top of the data (pax headers included).
    cap = limits.max_total_bytes + (limits.max_files * 2 + 64) * 1536
    with open(archive, "rb") as raw:
        hr = _Hashing(raw)
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
        with dctx.stream_reader(hr, closefd=False) as zr:
            br = _BoundedReader(zr, cap)
            try:
                tf = tarfile.open(fileobj=br, mode="r|", tarinfo=_bounded_tarinfo(limits.max_header_bytes))
                for m in tf:
                    yield m, _check_name(m.name), tf
                while hr.read(CHUNK):  # hash trailing bytes too
                    pass
            except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
                if br.exceeded:
                    raise ArchiveError(f"the archive expands to more than its limit of {cap} bytes") from None
                raise ArchiveError(f"the archive is damaged or not a tar+zstd archive ({e})") from None
            yield None, hr.h.hexdigest(), hr.n


def _check_name(name: str) -> str | None:
    if name.startswith("/"):
        raise ArchiveError(f"refused: absolute path {name!r} in the archive")
    parts = [p for p in name.split("/") if p != ""]
    if not parts or parts[0] != ROOT:
        raise ArchiveError(f"refused: {name!r} is not under {ROOT}/")
    if any(p in (".", "..") for p in parts):
        raise ArchiveError(f"refused: {name!r} contains '.' or '..'")
    return "/".join(parts[1:]) or None


def _validate(
    archive: Path, limits: ArchiveLimits
) -> tuple[list[tuple[str, tarfile.TarInfo]], str, int, int]:
    """First pass: read the whole archive without writing anything; return the plan."""
    plan: list[tuple[str, tarfile.TarInfo]] = []
    files, dirs, implied = set(), set(), set()
    total = 0
    with contextlib.closing(_members(archive, limits)) as members:
        for m, rel, tf in members:
            if m is None:
                return plan, rel, tf, total
            _validate_member(m, rel, files, dirs, implied, limits)
            total += m.size if rel is not None and not m.isdir() else 0
            if total > limits.max_total_bytes:
                raise ArchiveError(f"refused: more than {limits.max_total_bytes} bytes (at {rel})")
            if rel is not None:
                plan.append((rel, m))
    raise AssertionError("unreachable")


def _validate_member(
    m: tarfile.TarInfo, rel: str | None, files: set, dirs: set, implied: set, limits: ArchiveLimits
) -> None:
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        kind = (
            "a symbolic link"
            if m.issym()
            else "a hard link"
            if m.islnk()
            else "a device or fifo"
            if (m.isdev())
            else f"of type {m.type!r}"
        )
        raise ArchiveError(f"refused: {m.name!r} is {kind}; only files and folders are allowed")
    if rel is None and not m.isdir():
        raise ArchiveError(f"refused: {m.name!r} must be a folder")
    if rel is None:
        return
    if rel in files or rel in dirs:
        raise ArchiveError(f"refused: {m.name!r} appears twice in the archive")
    parents = rel.split("/")[:-1]
    for i in range(1, len(parents) + 1):
        parent = "/".join(parents[:i])
        if parent in files:
            raise ArchiveError(f"refused: {m.name!r} is inside something that is a file")
        implied.add(parent)
    if m.isdir():
        dirs.add(rel)
        return
    if rel in implied:
        raise ArchiveError(f"refused: {m.name!r} is both a file and a folder")
    if m.size > limits.max_file_bytes:
        raise ArchiveError(f"refused: {rel} is {m.size} bytes (limit {limits.max_file_bytes})")
    files.add(rel)
    if len(files) > limits.max_files:
        raise ArchiveError(f"refused: more than {limits.max_files} files (at {rel})")


def _write_member(dest: Path, rel: str, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
    target = dest.joinpath(*rel.split("/"))
    # dest was empty and only folders and regular files are created in it: no link can be followed
    os.makedirs(target if m.isdir() else target.parent, 0o755, exist_ok=True)
    if m.isdir():
        return
    mode = 0o755 if m.mode & 0o111 else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    src = tf.extractfile(m)
    with os.fdopen(fd, "wb") as out:
        left = m.size
        while left:
            b = src.read(min(CHUNK, left))
            if not b:
                raise ArchiveError(f"the archive ends inside {rel}")
            out.write(b)
            left -= len(b)


def extract_archive_sync(archive_path, dest_dir, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveInfo:
    """Blocking body of :func:`extract_archive`."""
    archive, dest = Path(archive_path), Path(dest_dir)
    if not archive.is_file():
        raise ArchiveError(f"archive {archive.name} does not exist")
    created = not dest.exists()
    if not created and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise ArchiveError(f"cannot extract into {dest}: it must be an empty folder")
    plan, sha, nbytes, total = _validate(archive, limits)
    wanted = {rel: m for rel, m in plan}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(_members(archive, limits)) as members:
            for m, rel, tf in members:  # second pass: the same bytes, now written
                v = wanted.get(rel) if m is not None else None
                if (m is None and rel != sha) or (
                    m is not None and rel is not None and (v is None or (v.type, v.size) != (m.type, m.size))
                ):
                    raise ArchiveError("the archive changed while it was being extracted")
                if m is None:
                    break
                if rel is not None:
                    _write_member(dest, rel, m, tf)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise
    nfiles = sum(1 for _, m in plan if not m.isdir())
    return ArchiveInfo(path=archive, sha256=sha, bytes=nbytes, files=nfiles, total_bytes=total)


async def extract_archive(archive_path, dest_dir, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveInfo:
    """Validate every member of ``archive_path`` (names, types, counts, sizes, bomb guard) and only then
    extract it into ``dest_dir`` (absent or empty), stripping ``archive/``. On refusal ``dest_dir`` is
    left as it was (removed if this call created it). Runs in a worker thread."""
    return await asyncio.to_thread(extract_archive_sync, archive_path, dest_dir, limits)
