"""`python -m portal_api [--host H] [--port P]`: serve the API and the reference pages with uvicorn."""

import argparse
import os

import uvicorn

from portal_api.app import create_app
from workers.runtime.logging import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the portal HTTP API and reference pages.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    level = os.environ.get("LOG_LEVEL", "info").lower()
    configure_logging(level.upper(), worker="portal_api")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
