"""Who may start a workspace: only the analysis's own, opened by a researcher Kinetic lists
(``KineticAuthenticator.pre_spawn_start`` with the hand-over from /hub/analysis/<id>), against the
real Kinetic stand-in. The REST-API side (an operator's start refused) is in tests/test_workspaces.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import requests
from tornado import web

from kinetic_auth.authenticator import KineticAuthenticator
from kinetic_auth.standin.seed import ADA, KATHERINE, default_seed

from ..support import running_standin


@pytest.fixture(scope="module")
def kinetic(tmp_path_factory):
    with running_standin(tmp_path_factory.mktemp("hand-over-standin")) as s:
        yield s


def researcher(kinetic, uuid):
    cookie = kinetic.sign_in(requests.Session(), uuid)

    async def get_auth_state():
        return {"sso_cookie": cookie}

    return SimpleNamespace(name=uuid, get_auth_state=get_auth_state)


def spawner(name="a-101"):
    return SimpleNamespace(name=name, analysis=None)


async def refusal(auth, owner, server) -> str:
    with pytest.raises(web.HTTPError) as e:
        await auth.pre_spawn_start(SimpleNamespace(name=owner), server)
    return f"{e.value.status_code} {e.value.log_message}"


async def test_only_an_analysis_workspace_handed_over_by_a_listed_researcher_starts(kinetic):
    auth = KineticAuthenticator(kinetic_url=kinetic.url, kinetic_timeout=5)
    ada, kat = researcher(kinetic, ADA), researcher(kinetic, KATHERINE)
    # a person's server, or another analysis's, is never a workspace
    assert (await refusal(auth, ADA, spawner())).startswith("400 Workspaces belong to Kinetic analyses")
    assert (await refusal(auth, "analysis-102", spawner())).startswith("400")
    assert (await refusal(auth, "analysis-101", spawner("scratch"))).startswith("400")
    # the analysis's own, but nobody opened it from Kinetic (an operator through the REST API)
    assert (await refusal(auth, "analysis-101", spawner())).startswith("403 Open analysis 101 from Kinetic")
    # opened by someone Kinetic does not list on it
    auth.hand_over_opener("analysis-101", "a-101", kat)
    assert "is not a researcher on analysis 101" in await refusal(auth, "analysis-101", spawner())
    # a hand-over is used once, and only while fresh
    auth.hand_over_opener("analysis-101", "a-101", ada)
    auth._openers[("analysis-101", "a-101")] = (time.monotonic() - auth.HAND_OVER_SECONDS - 1, ada)
    assert (await refusal(auth, "analysis-101", spawner())).startswith("403")
    # opened by Ada, who is on it: the spawner gets the analysis (with its key) as Kinetic gave it to her
    auth.hand_over_opener("analysis-101", "a-101", ada)
    ready = spawner()
    await auth.pre_spawn_start(SimpleNamespace(name="analysis-101"), ready)
    assert str(ready.analysis["id"]) == "101" and ready.analysis["api_key"]
    assert (await refusal(auth, "analysis-101", spawner())).startswith("403")  # used up


async def test_nobody_signs_in_under_a_workspace_owners_name(tmp_path):
    """The hub user analysis-101 owns analysis 101's workspace: signing in as it would open it. A
    Kinetic account named like one (Kinetic names people by uuid, so it never should) is refused."""
    seed = default_seed()
    seed["researchers"] = [*seed["researchers"], {**seed["researchers"][0], "uuid": "analysis-101"}]
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    with running_standin(tmp_path, tmp_path / "seed.json") as kinetic:
        auth = KineticAuthenticator(kinetic_url=kinetic.url, kinetic_timeout=5)  # asks Kinetic who
        impostor = kinetic.sign_in(requests.Session(), "analysis-101")
        assert impostor  # Kinetic signed them in …
        assert await auth.authenticate(None, {"sso_cookie": impostor}) is None  # … the hub does not
        ada = await auth.authenticate(None, {"sso_cookie": kinetic.sign_in(requests.Session(), ADA)})
        assert ada["name"] == ADA  # (a control: the same path signs a person in)
