"""When Kinetic does not answer, researchers are told so in words and nothing is started."""

import requests

from kinetic_auth.standin.seed import ADA

from .hub import owner, running_hub
from .support import free_port


class DeadKinetic:
    """The stand-in's keys (so cookies still verify) at an address where nothing listens."""

    def __init__(self, standin):
        self.state_dir = standin.state_dir
        self.url = f"http://127.0.0.1:{free_port()}"


def test_kinetic_down_is_explained_and_starts_nothing(tmp_path, standin):
    with running_hub(tmp_path, DeadKinetic(standin)) as hub:
        s = requests.Session()
        standin.sign_in(s, ADA)  # the cookie comes from the (live) stand-in; this hub cannot ask Kinetic
        assert s.get(f"{hub.url}/hub/login", allow_redirects=False).status_code == 302
        home = s.get(f"{hub.url}/hub/home")
        assert home.status_code == 200 and "Kinetic is not answering" in home.text
        r = s.get(f"{hub.url}/hub/analysis/102", allow_redirects=False)
        assert r.status_code == 502 and "could not check your access with Kinetic" in r.text
        assert hub.servers(owner(102)) == {} and hub.servers(ADA) == {}
        assert not (tmp_path / "workspaces" / "102").exists()
