"""Async client for the Kinetic API (the real one, or the stand-in).

Researcher calls are made *as the researcher*: Kinetic authorizes them by the SSO cookie,
so the hub never decides on its own who may see an analysis. Enclave calls use the
enclave's Bearer key, which only the enclave service holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("kinetic.client")


class KineticError(Exception):
    """Kinetic could not be asked (down, slow, or an unexpected answer). ``status`` is the HTTP
    status Kinetic answered with, or None when it did not answer at all."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class KineticClient:
    def __init__(
        self,
        base_url: str,
        cookie_name: str = "oxa",
        enclave_key: str = "",
        timeout: float = 10.0,
        attempts: int = 3,
    ):
        self.base_url = base_url.rstrip("/")
        self.cookie_name = cookie_name
        self.enclave_key = enclave_key
        self.timeout = timeout
        self.attempts = attempts

    # -- transport ---------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        sso: str | None = None,
        bearer: str | None = None,
        body: dict | bytes | None = None,
        headers: dict | None = None,
        allow_404: bool = False,
    ):
        headers = dict(headers or {})
        if sso:
            headers["Cookie"] = f"{self.cookie_name}={sso}"
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = HTTPRequest(
            self.base_url + path,
            method=method,
            headers=headers,
            body=body,
            request_timeout=self.timeout,
            connect_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        # Only idempotent requests are retried: a POST that reached Kinetic must not run twice.
        attempts = self.attempts if method in ("GET", "PUT") else 1
        for attempt in range(1, attempts + 1):
            try:
                resp = await AsyncHTTPClient().fetch(req)
                return json.loads(resp.body) if resp.body else {}
            except HTTPClientError as e:
                if e.code == 404 and allow_404:
                    return None
                if e.code in (401, 403, 404) or (400 <= e.code < 500 and e.code != 429):
                    raise KineticError(f"Kinetic answered {e.code} to {method} {path}", e.code) from None
                err, status = f"Kinetic answered {e.code}", e.code
            except (TimeoutError, OSError) as e:
                err, status = f"Kinetic could not be reached ({type(e).__name__})", None
            if attempt < attempts:
                # exponential backoff with full jitter, bounded
                await asyncio.sleep(random.uniform(0, min(2.0, 0.2 * 2**attempt)))
        log.warning("%s %s failed after %d attempt(s): %s", method, path, attempts, err)
        raise KineticError(err, status)

    # -- researcher API (authorized by the SSO cookie) ------------------------------------------
    async def whoami(self, sso: str) -> dict | None:
        """Who the cookie belongs to, asked of Kinetic (used when no keys are configured)."""
        try:
            return await self._request("GET", "/accounts/api/user", sso=sso, allow_404=True)
        except KineticError as e:
            if e.status in (401, 403):
                return None
            raise

    async def list_analyses(self, sso: str) -> list[dict]:
        data = await self._request("GET", "/api/v1/researcher/analysis", sso=sso)
        return data.get("data", []) if isinstance(data, dict) else data

    async def get_analysis(self, analysis_id: str, sso: str) -> dict | None:
        """The analysis as this researcher sees it, or None when they are not on it (404)."""
        return await self._request(
            "GET", f"/api/v1/researcher/analysis/{quote(str(analysis_id))}", sso=sso, allow_404=True
        )

    async def info_urls(self, analysis_id: str, sso: str) -> list[str]:
        data = await self._request(
            "GET", f"/api/v1/researcher/responses/{quote(str(analysis_id))}/info", sso=sso
        )
        return data.get("info_urls", [])

    async def responses(self, analysis_api_key: str, cutoff: str, real: bool = False) -> dict:
        """Response download URLs: synthetic, or real when ``real`` (needs the enclave key)."""
        bearer = None
        if real:
            if not self.enclave_key:
                raise KineticError("real data needs the enclave key, which is not configured")
            bearer = self.enclave_key
        path = f"/api/v1/researcher/responses/{quote(analysis_api_key)}?{urlencode({'cutoff': cutoff})}"
        return await self._request("GET", path, bearer=bearer)

    async def download(self, url: str) -> bytes:
        """A data file from a URL Kinetic handed out. Retried like every idempotent Kinetic call
        (backoff with jitter, bounded); any failure is a KineticError with its status, in words."""
        req = HTTPRequest(url, request_timeout=self.timeout * 6, connect_timeout=self.timeout)
        name = url.split("?", 1)[0].rsplit("/", 1)[-1] or "a data file"  # never the signed query
        for attempt in range(1, self.attempts + 1):
            try:
                resp = await AsyncHTTPClient().fetch(req)
                return resp.body
            except HTTPClientError as e:
                if 400 <= e.code < 500 and e.code != 429:
                    raise KineticError(
                        f"Kinetic answered {e.code} to the download of {name}", e.code
                    ) from None
                err, status = f"Kinetic answered {e.code} to the download of {name}", e.code
            except (TimeoutError, OSError) as e:
                err, status = f"the download of {name} from Kinetic failed ({type(e).__name__})", None
            if attempt < self.attempts:
                await asyncio.sleep(random.uniform(0, min(2.0, 0.2 * 2**attempt)))
        log.warning("download failed after %d attempt(s): %s", self.attempts, err)
        raise KineticError(err, status)

    # -- enclave API (Bearer enclave key) -----------------------------------------------------
    async def create_run(self, analysis_id: str, message: str) -> dict:
        return await self._request(
            "POST",
            "/api/v1/enclave/runs",
            bearer=self.enclave_key,
            body={"analysis_id": analysis_id, "message": message},
        )

    async def log_run(self, run_api_key: str, stage: str, level: str, message: str) -> None:
        await self._request(
            "POST",
            "/api/v1/enclave/runs/log",
            bearer=self.enclave_key,
            body={"api_key": run_api_key, "stage": stage, "level": level, "message": message},
        )

    async def upload_results(self, run_api_key: str, data: bytes, md5_b64: str) -> dict:
        return await self._request(
            "POST",
            f"/api/v1/enclave/runs/upload_results?{urlencode({'api_key': run_api_key})}",
            bearer=self.enclave_key,
            body=data,
            headers={"Content-Type": "application/zip", "Content-MD5": md5_b64},
        )

    async def complete_run(self, run_api_key: str, status: str, output_signed_id: str = "") -> None:
        await self._request(
            "PUT",
            "/api/v1/enclave/runs/completion",
            bearer=self.enclave_key,
            body={"api_key": run_api_key, "status": status, "output_signed_id": output_signed_id},
        )
