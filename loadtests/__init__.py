"""Load tests (locust) for GoLedger; see ``locustfile.py``."""
