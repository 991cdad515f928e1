"""``kinetic-fetch-data``: download an analysis's synthetic response data into the workspace.

Run by ``provision.sh`` inside the workspace (as the workspace user), the same way in both worlds.
Inputs come from the environment, never from argv (argv is world-readable in ``/proc``):

``ANALYSIS_API_KEY``  the analysis key Kinetic gave the researcher (required)
``KINETIC_URL``       base URL of Kinetic, or of the stand-in (required)
``CUTOFF_DATE``       ``YYYY-MM-DD``; responses up to this date (default: today)
``KINETIC_DATA_DIR``  where the CSVs go (default: ``$HOME/kinetic/data``)

Every file is written to a temporary name in the same directory and renamed into place, so a
failed or interrupted download never leaves half a file and never removes what was there.
Files that are not Kinetic's (the researcher's own) are never touched.
Exit status: 0 done, 2 bad input, 3 Kinetic could not be asked or answered wrongly.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from kinetic_auth.kinetic import KineticClient, KineticError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class FetchError(Exception):
    def __init__(self, message: str, status: int = 3):
        super().__init__(message)
        self.status = status


class _Redact(logging.Filter):
    """The Kinetic client names request paths in its warnings; our paths carry the api key."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record):
        if self.secret:
            record.msg = str(record.getMessage()).replace(self.secret, "<analysis key>")
            record.args = ()
        return True


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "<analysis key>") if secret else text


def _inputs(env) -> tuple[str, str, str, Path]:
    key = env.get("ANALYSIS_API_KEY", "").strip()
    url = env.get("KINETIC_URL", "").strip()
    cutoff = env.get("CUTOFF_DATE", "").strip() or datetime.date.today().isoformat()
    if not key:
        raise FetchError("ANALYSIS_API_KEY is not set: the workspace does not know its analysis key", 2)
    if not url or not urlparse(url).scheme.startswith("http"):
        raise FetchError(f"KINETIC_URL is not an http(s) URL: {url!r}", 2)
    if not _DATE.match(cutoff):
        raise FetchError(f"CUTOFF_DATE must look like 2026-01-31, not {cutoff[:20]!r}", 2)
    try:
        datetime.date.fromisoformat(cutoff)
    except ValueError:
        raise FetchError(f"CUTOFF_DATE {cutoff!r} is not a real date", 2) from None
    home = Path(env.get("HOME") or Path.home())
    data_dir = Path(env.get("KINETIC_DATA_DIR") or home / "kinetic" / "data")
    return key, url, cutoff, data_dir


def file_names(urls: list[str]) -> list[str]:
    """Stable local names: the URL's file name, made unique (``responses.csv``, ``responses-2.csv``)."""
    names, seen = [], {}
    for u in urls:
        base = _SAFE_NAME.sub("_", os.path.basename(urlparse(u).path)) or "responses.csv"
        if not base.lower().endswith(".csv"):
            base += ".csv"
        n = seen.get(base, 0) + 1
        seen[base] = n
        if n > 1:
            stem, ext = os.path.splitext(base)
            base = f"{stem}-{n}{ext}"
        names.append(base)
    return names


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


async def _download(client: KineticClient, url: str, attempts: int) -> bytes:
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            body = await client.download(url)
            if not body or b"," not in body.split(b"\n", 1)[0]:
                raise FetchError("Kinetic sent a data file that is not CSV (no header line)")
            return body
        except FetchError:
            raise
        except Exception as e:  # HTTP errors, refused connections, timeouts
            code = getattr(e, "code", None)
            last = f"HTTP {code}" if code else type(e).__name__
            if code and 400 <= code < 500 and code != 429:
                break
        if attempt < attempts:
            await asyncio.sleep(random.uniform(0, min(4.0, 0.25 * 2**attempt)))
    raise FetchError(f"could not download a data file from Kinetic ({last})")


async def fetch(env=None, attempts: int = 4) -> list[Path]:
    """Fetch the synthetic CSVs; returns the paths written."""
    env = os.environ if env is None else env
    key, url, cutoff, data_dir = _inputs(env)
    logging.getLogger("kinetic.client").addFilter(_Redact(key))
    client = KineticClient(url, timeout=15.0, attempts=attempts)
    try:
        answer = None
        for attempt in range(1, attempts + 1):
            answer = await client.responses(key, cutoff)
            if answer.get("status") == "complete":
                break
            # Kinetic may still be preparing the export: wait, bounded.
            if attempt < attempts:
                await asyncio.sleep(random.uniform(0.5, min(5.0, 2**attempt)))
        if not answer or answer.get("status") != "complete":
            raise FetchError(
                f"Kinetic has not finished preparing the data (status "
                f"{(answer or {}).get('status')!r}); try again in a minute"
            )
        urls = answer.get("response_urls") or []
        if not urls:
            raise FetchError("Kinetic answered with no data files for this analysis")
    except KineticError as e:
        raise FetchError(_redact(f"could not ask Kinetic at {url} for the data: {e}", key)) from None
    # Download everything first, then rename into place: all files or none change.
    bodies = [await _download(client, u, attempts) for u in urls]
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, body in zip(file_names(urls), bodies):
        path = data_dir / name
        write_atomic(path, body)
        written.append(path)
    return written


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="kinetic-fetch-data: %(message)s")
    key = os.environ.get("ANALYSIS_API_KEY", "")
    try:
        written = asyncio.run(fetch())
    except FetchError as e:
        print(f"kinetic-fetch-data: error: {_redact(str(e), key)}", file=sys.stderr)
        return e.status
    except OSError as e:
        print(
            f"kinetic-fetch-data: error: could not write the data: {e.strerror} ({e.filename})",
            file=sys.stderr,
        )
        return 3
    for p in written:
        print(f"kinetic-fetch-data: wrote {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
