"""The portal HTTP API: FastAPI edge that reads the read store and publishes what a portal would."""
