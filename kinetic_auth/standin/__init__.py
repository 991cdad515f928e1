"""A stand-in for Kinetic: sign-in, the researcher API and the enclave API, for local use and tests."""
