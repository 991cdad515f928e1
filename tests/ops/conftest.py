"""Fixtures for running the kit as an operator would. The throwaway PostgreSQL server
(``postgres``) lives in ``tests/conftest.py``, shared with the enclave's tests."""
