"""What a finished run leaves behind, and for how long (W7: archives and images were never
cleaned up).

* When a run reaches a final state (:func:`cleanup_finished`, called from
  ``Pipeline.cleanup_run``): its extracted code folder and its analysis image go at once. Images
  are content-fingerprinted, so two runs of the same code share one: the image stays while another
  run that has not finished uses it. Builds and removals exclude each other (:class:`ImageGuard`),
  so a build that just found the image cached cannot lose it before its run records the tag.
* After ``retention_days`` (:func:`prune`, the janitor): the stored archive and the outputs of a
  finished run are deleted; a released run's zip stays until ``release_retention_days``. The
  database rows (runs, events, reviews, releases, downloads) are the audit trail and are kept; each
  deletion is recorded there in plain words.

Every removal is idempotent, and a failure is logged, never raised: cleaning up must not fail a run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from sqlalchemy import func

from .db import Event, Release, Run
from .states import TERMINAL, State, values

log = logging.getLogger("enclave.retention")
DAY = 86400.0
TERMINAL_VALUES = values(TERMINAL)
RELEASE_DELETED = "release_deleted"  # event kind: the release zip is gone (download → 410)


def days_words(days: float) -> str:
    return f"{days:g} day" + ("" if days == 1 else "s")


class ImageGuard:
    """Builds are many readers, an image removal is one writer: a removal waits until no build is
    in progress and keeps new builds out while it checks who uses the tag and removes it."""

    def __init__(self):
        self._cond = asyncio.Condition()
        self._builds = 0

    async def __aenter__(self):  # around a build and the recording of its tag
        async with self._cond:
            self._builds += 1

    async def __aexit__(self, *exc):
        async with self._cond:
            self._builds -= 1
            self._cond.notify_all()

    async def removing(self, fn):
        async with self._cond:
            await self._cond.wait_for(lambda: self._builds == 0)
            return await fn()


async def default_remove_image(tag: str) -> bool:
    """Remove an analysis image; True when it is gone afterwards."""
    from . import images

    await images.remove_image(tag)
    return not await images.image_exists(tag)


def _rmtree(path: Path) -> bool:
    """Remove a folder or file; True when something was there."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return True
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False


async def remove_run_image(pipeline, run_id: str, tag: str) -> bool:
    """Remove the run's image unless a run that has not finished uses the same tag.
    True when the image is gone (or kept on purpose for another run)."""

    def in_use(session):
        return (
            session.query(Run.id)
            .filter(Run.image == tag, Run.id != run_id, Run.state.notin_(TERMINAL_VALUES))
            .first()
            is not None
        )

    async def check_and_remove():
        if await pipeline.db.run(in_use):
            log.info("run %s: image %s kept, another run still uses it", run_id, tag)
            return True
        return await pipeline.remove_image(tag)

    return await pipeline.image_guard.removing(check_and_remove)


async def cleanup_finished(pipeline, run_id: str, tag: str) -> None:
    """A finished run's code folder and image. The image goes first: while the code folder is
    there, the janitor knows this clean-up may not have completed and does it again."""
    try:
        if not await asyncio.to_thread(pipeline.code_dir(run_id).exists):
            return  # done before (the code folder goes last)
        if tag and not await remove_run_image(pipeline, run_id, tag):
            log.warning("run %s: image %s could not be removed yet; retried by the janitor", run_id, tag)
            return
        await asyncio.to_thread(_rmtree, pipeline.code_dir(run_id))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("run %s: removing the code folder or image failed", run_id)


def _finished_runs(session) -> list[dict]:
    """Finished runs with the time they reached their final state and, if released, of the release."""
    ended = (
        session.query(Event.run_id, func.max(Event.time).label("t"))
        .join(Run, Run.id == Event.run_id)
        .filter(Event.state == Run.state)
        .group_by(Event.run_id)
        .subquery()
    )
    rows = (
        session.query(Run.id, Run.state, Run.image, Run.updated, ended.c.t, Release.time)
        .outerjoin(ended, ended.c.run_id == Run.id)
        .outerjoin(Release, Release.run_id == Run.id)
        .filter(Run.state.in_(TERMINAL_VALUES))
    )
    return [
        {"id": i, "state": s, "image": img, "ended": t or upd, "released": rel}
        for i, s, img, upd, t, rel in rows
    ]


def _delete_files(run_dir: Path, old: bool, release_old: bool) -> tuple[bool, bool]:
    """(archive/outputs deleted, release zip deleted); removes the run folder once empty."""
    gone = gone_release = False
    if old:
        for name in (
            "archive.tar.zst",
            "output",
            "output.partial",
            "code",
            "data",
            "data.partial",
            "release.partial",
        ):
            gone = _rmtree(run_dir / name) or gone
    if release_old:
        gone_release = _rmtree(run_dir / "release.zip")
    try:
        run_dir.rmdir()  # only when nothing is left
    except OSError:
        pass
    return gone, gone_release


async def prune(pipeline, now: float | None = None) -> dict:
    """Delete what finished runs no longer need, by age; returns what was done (for logs and tests)."""
    now = time.time() if now is None else now
    keep, keep_release = pipeline.retention_days, pipeline.release_retention_days
    done = {"cleaned": [], "pruned": [], "releases": []}

    def listing():
        if not pipeline.runs_dir.is_dir():
            return set(), set()
        dirs = {p.name for p in pipeline.runs_dir.iterdir() if p.is_dir()}
        return dirs, {d for d in dirs if (pipeline.runs_dir / d / "code").exists()}

    dirs, with_code = await asyncio.to_thread(listing)
    if not dirs:
        return done
    for run in await pipeline.db.run(_finished_runs):
        run_id = run["id"]
        if run_id not in dirs:
            continue
        try:
            if run_id in with_code:  # a clean-up that did not complete (crash, withdrawal race)
                await cleanup_finished(pipeline, run_id, run["image"])
                done["cleaned"].append(run_id)
            old = keep > 0 and now - run["ended"] > keep * DAY
            released_at = run["released"] or run["ended"]
            release_old = (
                run["state"] == State.RELEASED.value
                and keep_release > 0
                and now - released_at > keep_release * DAY
            )
            if not (old or release_old):
                continue
            gone, gone_release = await asyncio.to_thread(
                _delete_files, pipeline.run_dir(run_id), old, release_old
            )
            if gone:
                done["pruned"].append(run_id)
                await pipeline.runs.note(
                    run_id,
                    "retention",
                    f"The archive and outputs were deleted after {days_words(keep)} (retention).",
                )
            if gone_release:
                done["releases"].append(run_id)
                await pipeline.runs.note(
                    run_id,
                    RELEASE_DELETED,
                    f"The released outputs (zip) were deleted after "
                    f"{days_words(keep_release)} (retention); they can no longer be downloaded.",
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s: retention clean-up failed", run_id)
    if done["pruned"] or done["releases"] or done["cleaned"]:
        log.info(
            "retention: %d run(s) cleaned up, %d pruned, %d release zip(s) deleted",
            len(done["cleaned"]),
            len(done["pruned"]),
            len(done["releases"]),
        )
    return done


async def janitor(pipeline, interval: float) -> None:
    """Prune now and then every ``interval`` seconds, forever; an error is logged and the next
    round comes as planned."""
    while True:
        try:
            await pipeline.prune()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention: the janitor's round failed; trying again in %g s", interval)
        await asyncio.sleep(max(interval, 0.01))


def release_missing(path: str) -> bool:
    return not path or not os.path.isfile(path)
