"""The enclave: submitted analyses are checked, run in isolation against real data, reviewed, released."""
