"""Packaging a release: the checked outputs as a zip with a manifest (sha256 per file).

Only files the output checks listed in their manifest go in, with the hash the checks saw; a file
that changed since (it should not: the output folder is the service's) stops the release. The zip
is deterministic (fixed timestamps, sorted names), written atomically, and rebuilt identically if
the step runs again after a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import zipfile
from pathlib import Path

from . import db as dbm
from .states import StepFailed

FIXED_DATE = (2000, 1, 1, 0, 0, 0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_zip(output_dir: Path, manifest: dict[str, str], dest: Path) -> tuple[str, int]:
    """Write ``dest`` (zip of the manifest's files + MANIFEST.json); return (sha256, bytes)."""
    tmp = dest.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(manifest):
            src = output_dir / rel
            if not src.is_file() or src.is_symlink() or _sha256(src) != manifest[rel]:
                tmp.unlink(missing_ok=True)
                raise StepFailed(f"Output file {rel} changed after it was checked; nothing was released.")
            info = zipfile.ZipInfo(f"output/{rel}", FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(src, "rb") as f:
                zf.writestr(info, f.read())
        info = zipfile.ZipInfo("MANIFEST.json", FIXED_DATE)
        info.external_attr = 0o644 << 16
        zf.writestr(
            info,
            json.dumps(
                {"files": {f"output/{k}": v for k, v in sorted(manifest.items())}, "algorithm": "sha256"},
                indent=2,
            ),
        )
    os.replace(tmp, dest)
    return _sha256(dest), dest.stat().st_size


async def package_release(pipeline, run) -> dict:
    run_id = run.id
    manifest = (run.output_report or {}).get("manifest") or {}
    if not manifest:
        raise StepFailed("There is no checked output to release.")
    dest = pipeline.release_path(run_id)
    sha, size = await asyncio.to_thread(build_zip, pipeline.output_dir(run_id), manifest, dest)

    def tx(session):
        rel = session.get(dbm.Release, run_id) or dbm.Release(run_id=run_id)
        rel.path, rel.sha256, rel.bytes, rel.manifest = str(dest), sha, size, dict(manifest)
        session.add(rel)

    await pipeline.db.run(tx)
    return {"sha256": sha, "bytes": size, "manifest": manifest}
