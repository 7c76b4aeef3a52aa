"""pipeline-steps: small, idempotent, tested deployment steps (`ps`)."""

__version__ = "0.1.0"
