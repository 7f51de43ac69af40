"""Browser tests: the reference portal and office board served on the real services, driven by
Playwright through Debian's Chromium (/usr/bin/chromium; never a downloaded browser).
Screenshots go to build/browser/."""

import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from apptctl.scenario_runner import publish_all, wait_until
from portal_api import seed
from portal_api.app import create_app
from portal_api.settings import ApiSettings
from tests.api.conftest import serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "build" / "browser"
DEV_API_KEYS = str(Path(__file__).resolve().parents[2] / "infra" / "dev" / "api-keys.json")
HAVE_CHROMIUM = Path(CHROMIUM).exists()
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def pytest_collection_modifyitems(items):
    if not HAVE_CHROMIUM:
        skip = pytest.mark.skip(
            reason="Debian's chromium is not installed (make chromium / .ci/run install it)"
        )
        for item in items:
            if "tests/browser" in str(item.fspath):
                item.add_marker(skip)


@dataclass
class Portal:
    url: str
    suffix: str
    run_id: str

    def tenant(self, business: str) -> str:
        return f"{business}{self.suffix}"

    def apt(self, key: str) -> str:
        return f"apt-{self.run_id}-{key}"

    def job(self, key: str) -> str:
        return f"job-{self.run_id}-{key}"


@pytest.fixture
async def portal(settings, topology, workers, broker, engine) -> AsyncIterator[Portal]:
    suffix, run_id = f"-{uuid.uuid4().hex[:6]}", "demo"
    messages = seed.messages(run_id, tenant_suffix=suffix)
    await publish_all(broker, messages)
    bookings = Counter(m.tenant_id for m in messages if m.type == "office.appointment.recorded")

    async def ready() -> bool:
        async with engine.connect() as conn:
            for tenant, count in bookings.items():
                offers = (
                    await conn.execute(
                        text("SELECT count(*) FROM portal.offers_now WHERE tenant_id = :t"), {"t": tenant}
                    )
                ).scalar_one()
                zones = (
                    await conn.execute(
                        text("SELECT count(*) FROM portal.business_units WHERE tenant_id = :t"), {"t": tenant}
                    )
                ).scalar_one()
                if offers < count or zones < 1:
                    return False
        return True

    assert await wait_until(ready, 60, 0.25), "the demo data did not reach the read store"
    api_settings = ApiSettings(
        AMQP_URL=settings.amqp_url,
        DATABASE_URL=settings.database_url,
        APPT_NAMESPACE=topology.namespace,
        APPT_API_KEYS_FILE=DEV_API_KEYS,
        APPT_DEMO_PAGES=True,
        APPT_DEMO_TENANTS=",".join(f"{t}{suffix}" for t in seed.TENANTS),
        APPT_API_SSE_HEARTBEAT_S=5,
    )
    app = create_app(api_settings, topology=topology)
    async with serve(app) as url:
        yield Portal(url, suffix, run_id)


@pytest.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    if not HAVE_CHROMIUM:
        pytest.skip("Debian's chromium is not installed (make chromium / .ci/run install it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        await browser.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request) -> str:
    return request.param


@pytest.fixture
async def new_page(browser, viewport):
    contexts = []

    async def make():
        context = await browser.new_context(viewport=VIEWPORTS[viewport])
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(20_000)
        return page

    yield make
    for context in contexts:
        await context.close()


async def shot(page, name: str, viewport: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}-{viewport}.png"), full_page=True)


async def sign_in(page, portal: Portal, business: str, who: str, *, as_: str = "Customer") -> None:
    """The demo sign-in: the business's card, then the customer's (or the office's, or with
    `as_="Project contact"` a project contact's) button."""
    await page.goto(portal.url + "/")
    card = page.locator("section.card", has=page.get_by_role("heading", name=portal.tenant(business)))
    label = "Office board" if who == "@office" else f"{as_} {who}"
    await card.get_by_role("button", name=label, exact=True).click()
