"""The stand-in speaks Kinetic's shapes: cookie format, authorization by cookie, data, enclave API."""
import requests

from kinetic_auth import cookie as sso
from kinetic_auth.keys import ensure_standin_keys
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE


def test_sign_in_sets_a_real_format_sso_cookie(standin):
    s = requests.Session()
    token = standin.sign_in(s, ADA)
    keys = ensure_standin_keys(standin.state_dir)
    who = sso.decode(token, sso.load_signing_key(keys.public_key_pem),
                     sso.load_encryption_key(keys.encryption_key))
    assert who.uuid == ADA
    assert token.count(".") == 4  # compact JWE


def test_analysis_detail_is_404_for_a_researcher_not_on_it(standin):
    ada, kat = requests.Session(), requests.Session()
    standin.sign_in(ada, ADA)
    standin.sign_in(kat, KATHERINE)
    assert ada.get(f"{standin.url}/api/v1/researcher/analysis/101").json()["title"]
    assert kat.get(f"{standin.url}/api/v1/researcher/analysis/101").status_code == 404
    assert requests.get(f"{standin.url}/api/v1/researcher/analysis/101").status_code == 401
    mine = ada.get(f"{standin.url}/api/v1/researcher/analysis").json()["data"]
    assert {a["id"] for a in mine} == {101, 102}


def test_shared_analysis_lists_both_researchers(standin):
    s = requests.Session()
    standin.sign_in(s, GRACE)
    a = s.get(f"{standin.url}/api/v1/researcher/analysis/101").json()
    assert {r["user_id"] for r in a["researchers"]} == {ADA, GRACE}


def test_real_data_needs_the_enclave_key(standin):
    s = requests.Session()
    standin.sign_in(s, ADA)
    key = s.get(f"{standin.url}/api/v1/researcher/analysis/101").json()["api_key"]
    syn = requests.get(f"{standin.url}/api/v1/researcher/responses/{key}?cutoff=2026-01-01").json()
    assert syn["status"] == "complete" and "/synthetic/" in syn["response_urls"][0]
    csv = requests.get(syn["response_urls"][0]).text
    assert csv.startswith("student_id,") and "synthetic-0001" in csv
    bad = requests.get(f"{standin.url}/api/v1/researcher/responses/{key}",
                       headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    enclave_key = ensure_standin_keys(standin.state_dir).enclave_key
    real = requests.get(f"{standin.url}/api/v1/researcher/responses/{key}?cutoff=2026-01-01",
                        headers={"Authorization": f"Bearer {enclave_key}"}).json()
    assert "/real/" in real["response_urls"][0]


def test_enclave_calls_are_recorded(standin):
    key = ensure_standin_keys(standin.state_dir).enclave_key
    h = {"Authorization": f"Bearer {key}"}
    run = requests.post(f"{standin.url}/api/v1/enclave/runs", json={"analysis_id": 102, "message": "go"},
                        headers=h).json()
    assert run["api_key"].startswith("r") and run["analysis_api_key"].startswith("a")
    assert requests.post(f"{standin.url}/api/v1/enclave/runs/log", headers=h,
                         json={"api_key": run["api_key"], "stage": "run", "level": "info",
                               "message": "hello"}).ok
    assert requests.post(f"{standin.url}/api/v1/enclave/runs/log", headers=h,
                         json={"api_key": run["api_key"], "stage": "bogus", "level": "info",
                               "message": "x"}).status_code == 400
    assert requests.put(f"{standin.url}/api/v1/enclave/runs/completion", headers=h,
                        json={"api_key": run["api_key"], "status": "failure"}).ok
    ends = [r["endpoint"] for r in standin.records()["records"]]
    assert ends[-3:] == ["runs", "log", "completion"]
