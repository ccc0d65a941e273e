"""Job specs, the version store, storage and the backends that run jobs."""
