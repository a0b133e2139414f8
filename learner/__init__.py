"""The IP-learning service: one process that watches the store for bindings
whose IP address must be learned, captures only what learning needs on their
interfaces, and hands what it learns to the engine (engine.host.Host)."""
