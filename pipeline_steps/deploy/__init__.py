"""Orchestration of deployment types and what surrounds every run: the deploy lock, the history log
and the run report. Modules here compose steps; they never re-implement them."""
