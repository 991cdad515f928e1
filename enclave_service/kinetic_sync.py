"""Tell Kinetic what the enclave did (W8, W9): a Kinetic run per enclave run, log lines for each
step, the results upload (zip + Content-MD5) and a completion whose status is the truth.

Kinetic being down never stops the pipeline: a failed call is written to the audit log, and the
completion (the call that matters) is retried at every service start until Kinetic has it.
"""

from __future__ import annotations

import base64
import hashlib
import logging

from kinetic_auth.kinetic import KineticClient, KineticError

from .states import State

log = logging.getLogger("enclave.kinetic")

# Kinetic's stages are archive|review|package|run|check|end; each of our states maps to one.
STAGE_FOR_STATE = {
    State.SUBMITTED: "archive",
    State.ARCHIVED: "archive",
    State.FAILED_ARCHIVED: "archive",
    State.CODE_CHECKED: "review",
    State.FAILED_CODE_CHECKED: "review",
    State.BUILT: "package",
    State.FAILED_BUILT: "package",
    State.RAN: "run",
    State.FAILED_RAN: "run",
    State.OUTPUTS_CHECKED: "check",
    State.FAILED_OUTPUTS_CHECKED: "check",
    State.IN_REVIEW: "review",
    State.APPROVED: "review",
    State.REJECTED: "review",
    State.RELEASED: "end",
    State.FAILED_RELEASED: "end",
    State.WITHDRAWN: "end",
}


class KineticSync:
    def __init__(self, client: KineticClient | None):
        self.client = client

    @property
    def enabled(self) -> bool:
        return self.client is not None and bool(self.client.enclave_key)

    async def create_run(self, analysis_id: str, message: str) -> dict | None:
        if not self.enabled:
            return None
        return await self.client.create_run(analysis_id, message)

    async def log(self, run_key: str, state: State, level: str, message: str) -> str | None:
        """Returns an error text when Kinetic could not be told, None otherwise."""
        if not self.enabled or not run_key:
            return None
        try:
            await self.client.log_run(run_key, STAGE_FOR_STATE.get(state, "end"), level, message[:2000])
        except KineticError as e:
            log.warning("could not send a log line to Kinetic: %s", e)
            return str(e)
        return None

    async def upload(self, run_key: str, data: bytes) -> str:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        reply = await self.client.upload_results(run_key, data, md5)
        return (reply or {}).get("signed_id", "")

    async def complete(self, run_key: str, status: str, signed_id: str = "") -> None:
        await self.client.complete_run(run_key, status, signed_id)
