"""In-memory stand-ins for the workers' stores and the runtime's unit of work: handler unit tests run on
them with no database and no broker (tests/integration/test_store_fakes.py holds them to the real stores)."""
