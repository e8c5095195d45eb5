"""Load tests: `python -m loadtests.bench` (service vs. a bare ASGI ceiling) and a locustfile."""
