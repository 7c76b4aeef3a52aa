"""The test bed: a real Docker engine, registry and nginx on the run's own loopback address
(testbed.ports.address()), shared by tests, bench and demo."""
