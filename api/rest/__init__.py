"""The REST API (FastAPI, /api/v1): every request's identity verified, every action checked
against SpiceDB permission keys and audited under the request's correlation id."""
