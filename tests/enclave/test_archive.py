"""The submission archive: deterministic, consistent while files change (W6), and safe to extract."""

import io
import os
import tarfile
import threading

import pytest
import zstandard

from enclave_service import archive as arc
from enclave_service.archive import ArchiveError, ArchiveLimits, create_archive, extract_archive


def make_home(root):
    """A small analysis home with things that must be skipped next to things that must be kept."""
    files = {
        "kinetic/main.r": 'x <- read.csv("data/a.csv")\n',
        "kinetic/data/a.csv": "a,b\n1,2\n",
        "kinetic/renv.lock": "{}\n",
        "kinetic/renv/activate.R": "# renv\n",
        "kinetic/renv/library/R-4.2/pkg/DESCRIPTION": "Package: pkg\n",
        "kinetic/.git/HEAD": "ref: refs/heads/main\n",
        "kinetic/run.log": "log\n",
        ".cache/R/thing": "cache\n",
        ".local/share/rstudio/sources/buffer": "unsaved\n",
        ".Renviron": "ANALYSIS_API_KEY=asynthetic\n",
        ".Rhistory": "install.packages('x')\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "kinetic/output").mkdir()
    os.chmod(root / "kinetic/main.r", 0o755)
    return root


def names_of(path):
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
        with tarfile.open(fileobj=zr, mode="r|") as tf:
            return [(m.name, m.mtime, m.uid, m.uname) for m in tf]


async def test_roundtrip_skip_rules_and_determinism(tmp_path):
    home = make_home(tmp_path / "home")
    info = await create_archive(home, tmp_path / "a.tar.zst")
    entries = names_of(info.path)
    names = [n for n, *_ in entries]
    assert names[0] == "archive" and len(names) == len(set(names))
    assert all(n == "archive" or n.startswith("archive/") for n in names)
    assert {(m, u, un) for _, m, u, un in entries} == {(arc.FIXED_MTIME, 0, "")}
    for skipped in (
        ".git",
        "run.log",
        ".cache",
        ".local/share/rstudio",
        "renv/library",
        ".Renviron",
        ".Rhistory",
    ):
        assert not any(skipped in n for n in names), skipped
    assert "archive/kinetic/renv/activate.R" in names and "archive/kinetic/output" in names
    kept = ("kinetic/main.r", "kinetic/data/a.csv", "kinetic/renv.lock", "kinetic/renv/activate.R")
    assert info.files == 4 and info.total_bytes == sum((home / r).stat().st_size for r in kept)
    assert info.bytes == info.path.stat().st_size

    # the same tree (touched, copied elsewhere) gives the same fingerprint; a content change does not
    os.utime(home / "kinetic/main.r", (1, 1))
    again = await create_archive(home, tmp_path / "b.tar.zst")
    assert again.sha256 == info.sha256
    (home / "kinetic/main.r").write_text("y <- 2\n")
    assert (await create_archive(home, tmp_path / "c.tar.zst")).sha256 != info.sha256

    out = tmp_path / "out"
    got = await extract_archive(info.path, out)
    assert (got.sha256, got.files, got.total_bytes) == (info.sha256, info.files, info.total_bytes)
    assert (out / "kinetic/main.r").read_text() == 'x <- read.csv("data/a.csv")\n'
    assert os.stat(out / "kinetic/main.r").st_mode & 0o111
    assert (out / "kinetic/output").is_dir() and not (out / "archive").exists()


@pytest.mark.parametrize("kind", ["outside", "inside", "fifo"])
async def test_create_refuses_links_and_special_files(tmp_path, kind):
    home = make_home(tmp_path / "home")
    p = home / "kinetic/data/x"
    if kind == "outside":
        p.symlink_to("/etc/passwd")
    elif kind == "inside":
        p.symlink_to(home / "kinetic/main.r")
    else:
        os.mkfifo(p)
    with pytest.raises(ArchiveError, match="kinetic/data/x"):
        await create_archive(home, tmp_path / "a.tar.zst")
    assert not (tmp_path / "a.tar.zst").exists()


async def test_create_limits_name_the_file(tmp_path):
    home = make_home(tmp_path / "home")
    (home / "kinetic/big.bin").write_bytes(b"x" * 2000)
    with pytest.raises(ArchiveError, match="kinetic/big.bin.*at most 1000"):
        await create_archive(home, tmp_path / "a", ArchiveLimits(max_file_bytes=1000))
    with pytest.raises(ArchiveError, match="too many files"):
        await create_archive(home, tmp_path / "a", ArchiveLimits(max_files=2))
    with pytest.raises(ArchiveError, match="larger than 1500"):
        await create_archive(home, tmp_path / "a", ArchiveLimits(max_total_bytes=1500))


class GatedReader:
    """Wraps the archiver's handle on one file: on the first read of each open, a real writer thread
    appends to the file and the read waits for it. The change lands *during* the read, every attempt,
    however loaded the machine is (a free-running writer makes this test flaky on 2 busy cores)."""

    def __init__(self, fh, writer):
        self.fh, self.writer, self.fired = fh, writer, False

    def read(self, n=-1):
        data = self.fh.read(n)
        if not self.fired:
            self.fired = True
            self.writer.request.set()
            assert self.writer.done.wait(5)
            self.writer.done.clear()
        return data

    def fileno(self):
        return self.fh.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


class Writer(threading.Thread):
    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.request, self.done, self.writes = path, threading.Event(), threading.Event(), 0
        self.stop = False

    def run(self):
        while self.request.wait(5) and not self.stop:
            self.request.clear()
            with open(self.path, "ab") as fh:
                fh.write(b"1" * 4096)
            self.writes += 1
            self.done.set()


async def test_file_changing_during_archive_fails_clearly(tmp_path, monkeypatch):
    """W6: a file written to during both attempts makes the snapshot refuse, naming the file."""
    home = make_home(tmp_path / "home")
    busy = home / "kinetic/busy.csv"
    busy.write_bytes(b"0" * 1_000_000)
    writer = Writer(busy)
    writer.start()

    def gated_open(path, mode="r", *a, **kw):
        fh = open(path, mode, *a, **kw)
        return GatedReader(fh, writer) if str(path) == str(busy) else fh

    monkeypatch.setattr(arc, "open", gated_open, raising=False)
    try:
        with pytest.raises(ArchiveError, match="kinetic/busy.csv kept changing"):
            await create_archive(home, tmp_path / "a.tar.zst", retry_delay=0.01)
    finally:
        writer.stop = True
        writer.request.set()
        writer.join()
    assert writer.writes == 2  # one change per attempt, each caught
    assert not (tmp_path / "a.tar.zst").exists() and not list(tmp_path.glob(".*partial"))


async def test_file_changing_once_is_retried(tmp_path, monkeypatch):
    home = make_home(tmp_path / "home")
    real, calls = arc._add_file, []

    def flaky(tf, path, rel, st):
        if rel == "kinetic/data/a.csv" and not calls:
            calls.append(rel)
            with open(path, "a") as fh:  # the researcher saves while we read
                fh.write("3,4\n")
        return real(tf, path, rel, st)

    monkeypatch.setattr(arc, "_add_file", flaky)
    info = await create_archive(home, tmp_path / "a.tar.zst", retry_delay=0.01)
    out = tmp_path / "out"
    await extract_archive(info.path, out)
    assert calls and (out / "kinetic/data/a.csv").read_text() == "a,b\n1,2\n3,4\n"


def evil(path, members):
    """Write a tar.zst from (TarInfo, bytes|None) pairs exactly as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


def reg(name, data=b"x"):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def special(name, type_, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type_, linkname
    return ti, None


ROOTDIR = special("archive", tarfile.DIRTYPE)


@pytest.mark.parametrize(
    "members, reason",
    [
        ([ROOTDIR, reg("archive/ok"), reg("archive/../../escaped")], "'..'"),
        ([ROOTDIR, reg("/tmp/escaped-abs")], "absolute"),
        ([ROOTDIR, reg("elsewhere/x")], "not under archive/"),
        ([ROOTDIR, special("archive/passwd", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
        ([ROOTDIR, reg("archive/a"), special("archive/b", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
        ([ROOTDIR, special("archive/dev", tarfile.CHRTYPE)], "device"),
        ([ROOTDIR, reg("archive/a"), reg("archive/a")], "twice"),
        ([ROOTDIR, reg("archive/a"), reg("archive/a/b")], "inside something that is a file"),
        ([ROOTDIR] + [reg(f"archive/f{i}") for i in range(6)], "more than 5 files"),
        ([ROOTDIR, reg("archive/big", b"0" * 3000)], "limit 2000"),
        ([ROOTDIR, reg("archive/a", b"0" * 1500), reg("archive/b", b"0" * 1500)], "more than 2500 bytes"),
    ],
)
async def test_extract_refuses_malicious_archives(tmp_path, members, reason):
    src = evil(tmp_path / "evil.tar.zst", members)
    dest = tmp_path / "sandbox" / "dest"
    limits = ArchiveLimits(max_files=5, max_file_bytes=2000, max_total_bytes=2500)
    with pytest.raises(ArchiveError, match=reason):
        await extract_archive(src, dest, limits)
    assert not dest.exists()
    assert [p.name for p in tmp_path.rglob("*")] == ["evil.tar.zst"]  # nothing written anywhere
    assert not os.path.exists("/tmp/escaped-abs")


async def test_extract_refuses_a_zstd_bomb_while_streaming(tmp_path):
    """Every member header is within limits, but a 50 MiB pax header (which tarfile would read into
    memory) makes the stream expand past the cap: the bounded reader stops it mid-stream."""
    ti, data = reg("archive/small")
    ti.pax_headers = {"comment": "0" * (50 * 2**20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ROOTDIR[0])
        tf.addfile(ti, io.BytesIO(data))
    bomb = tmp_path / "bomb.tar.zst"
    bomb.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw.getvalue()))
    assert bomb.stat().st_size < 100_000
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="expands to more than"):
        await extract_archive(
            bomb, dest, ArchiveLimits(max_total_bytes=2**20, max_files=10, max_header_bytes=2**30)
        )
    assert dest.is_dir() and not any(dest.iterdir())
    # with the default header bound it never gets that far: refused by the announced size
    with pytest.raises(ArchiveError, match="pax extended header of 5242"):
        await extract_archive(bomb, dest)


@pytest.mark.parametrize(
    "kind, words", [(tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.XGLTYPE, "pax global header")]
)
async def test_header_extensions_are_bounded_before_they_are_read(tmp_path, kind, words):
    ti = tarfile.TarInfo("././@LongLink")
    ti.type, ti.size = kind, 3 * 2**20
    raw = io.BytesIO()
    raw.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
    raw.write(b"a" * ti.size)
    raw.write(b"\0" * 1024)
    bomb = tmp_path / "long.tar.zst"
    bomb.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw.getvalue()))
    with pytest.raises(ArchiveError, match=f"{words} of {3 * 2**20} bytes"):
        await extract_archive(bomb, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


async def test_extract_refuses_garbage_and_non_empty_destination(tmp_path):
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="damaged"):
        await extract_archive(junk, tmp_path / "d1")
    assert not (tmp_path / "d1").exists()
    good = await create_archive(make_home(tmp_path / "home"), tmp_path / "good.tar.zst")
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2/keep").write_text("mine")
    with pytest.raises(ArchiveError, match="empty folder"):
        await extract_archive(good.path, tmp_path / "d2")
    assert (tmp_path / "d2/keep").read_text() == "mine"
