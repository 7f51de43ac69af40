"""`make portal`: the whole demo (services set up, workers, stories, API, portal) on one URL.

Migrations, topology, the three workers, the four stories seeded, and the API with the reference portal
and office board; Ctrl-C stops everything."""

import argparse
import asyncio
import os
import sys

import uvicorn

from apptctl.processes import WorkerProcesses
from apptctl.scenario_runner import publish_all
from infra import topology as topology_module
from infra.db.admin import ensure_database
from infra.db.migrate import upgrade_async
from portal_api import seed
from portal_api.app import create_app
from portal_api.settings import ApiSettings
from workers.runtime.broker import Broker
from workers.runtime.logging import configure_logging


async def prepare(settings: ApiSettings, workers: WorkerProcesses) -> None:
    await ensure_database(settings.database_url)
    await upgrade_async(settings.database_url)
    topology = await topology_module.apply(settings.amqp_url, settings.namespace, settings.retry_delays_s)
    workers.start()
    await workers.wait_consuming(settings.amqp_url, topology, timeout_s=60)
    broker = Broker(settings.amqp_url, topology, name="portal-seed", signer=settings.keyring())
    await broker.connect()
    try:
        await publish_all(broker, seed.messages())
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    os.environ.setdefault("APPT_DEMO_PAGES", "true")
    settings = ApiSettings()
    configure_logging(settings.log_level, worker="portal_api")
    workers = WorkerProcesses({})
    try:
        print("starting: migrations, topology, workers, demo data …", flush=True)
        asyncio.run(prepare(settings, workers))
        print(
            f"\nCustomer Portal and office board: http://{args.host}:{args.port}/\n"
            f"API docs (Swagger UI): http://{args.host}:{args.port}/docs\nCtrl-C stops everything.\n",
            flush=True,
        )
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=3,
        )
    except KeyboardInterrupt:
        pass
    finally:
        codes = workers.stop()
        print(f"stopped: workers {codes}", file=sys.stderr)


if __name__ == "__main__":
    main()
