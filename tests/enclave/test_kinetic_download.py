"""The real-data download the enclave depends on: retried like every idempotent Kinetic call, and a
failure is a KineticError with its status and words (never 'unexpected error … HTTPClientError')."""

import pytest
import pytest_asyncio
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from kinetic_auth.kinetic import KineticClient, KineticError
from tests.support import free_port


@pytest_asyncio.fixture(loop_scope="function")
async def flaky():
    hits = {"n": 0}

    class Data(RequestHandler):
        def get(self, kind):
            hits["n"] += 1
            if kind == "flaky" and hits["n"] < 3:
                self.set_status(503)
            elif kind == "gone":
                self.set_status(404)
            else:
                self.write(b"student_id,score\nS1,5\n")

    port = free_port()
    server = HTTPServer(Application([(r"/data/(\w+)/responses.csv", Data)]))
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}", hits
    server.stop()


async def test_download_is_retried_and_fails_in_words_with_a_status(flaky):
    base, hits = flaky
    client = KineticClient(base, attempts=3)
    assert await client.download(f"{base}/data/flaky/responses.csv?sig=SECRET") == b"student_id,score\nS1,5\n"
    assert hits["n"] == 3
    hits["n"] = 0
    with pytest.raises(KineticError) as e:
        await client.download(f"{base}/data/gone/responses.csv?sig=SECRET")
    assert e.value.status == 404 and hits["n"] == 1  # a 404 is not retried
    assert "responses.csv" in str(e.value) and "SECRET" not in str(e.value)
    dead = KineticClient(f"http://127.0.0.1:{free_port()}", attempts=2)
    with pytest.raises(KineticError) as e:
        await dead.download(f"{dead.base_url}/data/x/responses.csv")
    assert e.value.status is None and "failed" in str(e.value)
