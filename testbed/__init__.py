"""The test bed: a real Docker engine, registry and nginx on 127.0.0.1, shared by tests, bench and demo."""
