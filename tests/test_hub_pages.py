"""The hub pages' own logic without a hub: display names and the progress event stream; and, on
the real hub, that no hub page can be framed by another page."""

import asyncio
import json
from types import SimpleNamespace

import requests
from jupyterhub.slugs import is_valid_display_name

from kinetic_auth.handlers import GENERIC_FAILURE, AnalysisProgressHandler, display_name
from kinetic_auth.standin.seed import ADA


def test_display_names_are_the_title_made_valid_for_jupyterhub():
    cases = {
        "Spaced practice effects": "Spaced practice effects",
        '<img src=x onerror="window.__pwned=1">Hostile & "title"': '<img src=x onerror="window.__pwned=1">Hostile & "title"',
        "  tabs\tand\nnewlines   and  spaces ": "tabs and newlines and spaces",
        "x" * 400: "x" * 255,
        "": "Analysis 7",
        "\u200b\t ": "Analysis 7",
        "Cafe\u0301 études": "Café études",
    }
    for title, expected in cases.items():
        got = display_name({"title": title}, "7")
        assert got == expected, (title, got)
        assert is_valid_display_name(got), got
    assert display_name({}, "7") == "Analysis 7"


class FakeSpawner:
    """A start that yields steps, then ends ready or failed (as a WorkspaceSpawner does)."""

    def __init__(self, steps, outcome, failure_message=None, step_delay=0.01):
        self.steps, self._outcome, self.step_delay = steps, outcome, step_delay
        self.ready, self.active = False, True
        self.name, self.user = "a-101", SimpleNamespace(name="ada", url="/user/ada/")
        if failure_message is not None:
            self.failure_message = failure_message

    async def progress(self):
        for step in self.steps:
            await asyncio.sleep(self.step_delay)
            yield step
        await asyncio.sleep(self.step_delay)
        self.ready = self._outcome == "ready"
        self.active = self.ready


class Recorder(AnalysisProgressHandler):
    """The handler's stream with the HTTP write replaced by a list."""

    poll_seconds = 0.02
    log = SimpleNamespace(exception=print)

    def __init__(self):  # no tornado request: only the stream logic is under test
        self.sent = []

    async def send(self, event):
        self.sent.append(json.loads(json.dumps(event)))


STEPS = [
    {"progress": 10, "message": "Finding a host"},
    {"progress": 50, "message": "<b>Provisioning</b>"},
    {"progress": 30, "message": "late"},
    {"progress": 100, "message": "Starting", "html_message": "<i>x</i>"},
]


async def test_the_stream_sends_each_step_then_ready_with_the_workspace_url():
    h = Recorder()
    await h.stream(FakeSpawner(STEPS, "ready"))
    assert [e["message"] for e in h.sent[:-1]] == [s["message"] for s in STEPS]
    assert all("html_message" not in e for e in h.sent)  # messages are text, never HTML
    progress = [e["progress"] for e in h.sent]
    assert progress == sorted(progress) and progress[-1] == 100
    assert h.sent[-1] == {
        "progress": 100,
        "ready": True,
        "message": "Your workspace is ready.",
        "url": "/user/ada/a-101/",
    }


async def test_a_failed_start_ends_the_stream_with_the_spawners_reason():
    h = Recorder()
    await h.stream(FakeSpawner(STEPS[:2], "failed", failure_message="No host is free right now."))
    assert h.sent[-1] == {"progress": 100, "failed": True, "message": "No host is free right now."}
    h = Recorder()
    await h.stream(FakeSpawner(STEPS[:1], "failed"))  # a spawner without failure_message
    assert h.sent[-1] == {"progress": 100, "failed": True, "message": GENERIC_FAILURE}


async def test_a_start_already_over_answers_at_once():
    h = Recorder()
    spawner = FakeSpawner([], "ready")
    spawner.ready = True
    await asyncio.wait_for(h.stream(spawner), 1)
    assert h.sent == [
        {"progress": 100, "ready": True, "message": "Your workspace is ready.", "url": "/user/ada/a-101/"}
    ]
    h = Recorder()
    spawner = FakeSpawner([], "failed", failure_message=None)
    spawner.active = False
    await asyncio.wait_for(h.stream(spawner), 1)
    assert h.sent[-1]["failed"] is True


async def test_a_slow_start_gets_keepalives_and_nothing_blocks():
    h = Recorder()
    h.keepalive_seconds = 0.05
    spawner = FakeSpawner(STEPS[:1], "ready", step_delay=0.3)
    ticks = 0

    async def ticker():  # the event loop stays free while the stream waits
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.ensure_future(ticker())
    await h.stream(spawner)
    t.cancel()
    assert None in h.sent and h.sent[-1]["ready"] and ticks > 30


def test_no_hub_page_can_be_framed(hub):
    """Our pages (sign-in, home, an analysis, its progress, the old editor link, sign-out) and
    JupyterHub's own (a page, the API, its 404) all carry JupyterHub's Content-Security-Policy with
    frame-ancestors 'none' — not replaced by a weaker one — and X-Frame-Options for old browsers."""
    u = hub.url
    answers = [
        requests.get(f"{u}/hub/home", allow_redirects=False),  # not signed in: off to sign in
        requests.get(f"{u}/hub/login", allow_redirects=False),  # no Kinetic cookie: off to Kinetic
        requests.get(f"{u}/editor/"),
    ]
    s = hub.browser_session(ADA)
    answers += [
        s.get(f"{u}/hub/home"),
        s.get(f"{u}/hub/analysis/103", allow_redirects=False),  # Grace's alone: refused, in words
        s.get(f"{u}/hub/analysis/103/progress"),
        s.post(f"{u}/hub/analysis/103"),  # no XSRF token, no such method
        s.get(f"{u}/hub/token"),
        s.get(f"{u}/hub/api/user"),
        s.get(f"{u}/hub/no/such/page"),
        s.get(f"{u}/hub/logout", allow_redirects=False),
    ]
    assert {r.status_code for r in answers} >= {200, 302, 404}
    for r in answers:
        where = (r.request.method, r.request.url, r.status_code)
        policy = [d.strip() for d in r.headers.get("Content-Security-Policy", "").split(";")]
        assert "frame-ancestors 'none'" in policy, (where, policy)
        assert r.headers.get("X-Frame-Options") == "DENY", where
