"""The seed's four industry stories as clicks in the reference portal, at desktop and phone widths; a
customer cannot reach another's appointment by URL; the office board follows a customer's cancel live;
the approval flow from both sides."""

import time

import pytest

from tests.browser.conftest import Portal, shot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.browser]


async def open_job(page, portal: Portal, key: str) -> None:
    await page.locator(f'a[href="/portal/jobs/{portal.job(key)}"]').first.click()
    await page.wait_for_url(f"**/portal/jobs/{portal.job(key)}")


async def mark_no_reload(page) -> None:
    await page.evaluate("window.__sameDocument = true")


async def assert_no_reload(page) -> None:
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"


async def test_residential_homeowner_moves_a_service_visit(portal: Portal, new_page, viewport):
    page = await new_page()
    await sign_in(page, portal, "sunny-plumbing", "home-ana")
    await open_job(page, portal, "heater")
    await shot(page, "job-with-modify", viewport)
    await page.get_by_role("link", name="Modify").click()
    legend = page.locator("legend")
    assert "America/Chicago" in await legend.inner_text()
    choice = page.get_by_role("radio").nth(1)
    picked = (await choice.locator("xpath=..").inner_text()).strip()
    await choice.check()
    await shot(page, "pick-a-time", viewport)
    await page.get_by_role("button", name="Move to this time").click()
    await page.wait_for_url("**/portal/requests/**")
    await mark_no_reload(page)
    done = page.locator("[data-window]")
    await done.wait_for()
    assert (await done.inner_text()) == picked
    await assert_no_reload(page)
    await shot(page, "moved", viewport)


async def test_residential_homeowner_cancels_and_the_job_is_canceled(portal: Portal, new_page, viewport):
    page = await new_page()
    await sign_in(page, portal, "sunny-plumbing", "home-ben")
    await open_job(page, portal, "drain")
    await page.get_by_role("link", name="Modify").click()
    await page.get_by_label("Why are you canceling?").fill("Fixed it myself")
    await page.get_by_role("button", name="Cancel the appointment").click()
    await page.wait_for_url("**/portal/requests/**")
    await mark_no_reload(page)
    await page.get_by_text("Your appointment is canceled.").wait_for()
    job_status = page.locator("#job-status")
    await page.wait_for_function("document.querySelector('#job-status')?.textContent.trim() === 'canceled'")
    assert (await job_status.inner_text()).strip() == "canceled"
    await assert_no_reload(page)
    await shot(page, "canceled", viewport)


async def test_commercial_confirmed_visit_shows_why_and_no_modify(portal: Portal, new_page, viewport):
    page = await new_page()
    await sign_in(page, portal, "metro-hvac", "pm-carla")
    await open_job(page, portal, "rtu-2")
    card = page.locator(f'[data-appointment-id="{portal.apt("rtu-2")}"]')
    assert "can't be rescheduled online" in await card.locator("[data-why]").inner_text()
    assert await card.get_by_role("link", name="Modify").count() == 0
    await shot(page, "confirmed-blocked", viewport)


async def test_construction_project_contact_moves_one_install_of_several(portal: Portal, new_page, viewport):
    """The project lead (a named contact, not the customer) moves floor 2's install; floors 1 and 3 stay,
    and the page follows the move without a reload."""
    page = await new_page()
    await sign_in(page, portal, "skyline-build", "lead-fay", as_="Project contact")
    await page.wait_for_url("**/portal/jobs")
    before = {
        key: await page.locator(f'[data-appointment-id="{portal.apt(key)}"]').inner_text()
        for key in ("floor-1", "floor-3")
    }
    await open_job(page, portal, "floor-2")
    await page.get_by_role("link", name="Modify").click()
    choice = page.get_by_role("radio").first
    picked = (await choice.locator("xpath=..").inner_text()).strip()
    await choice.check()
    await page.get_by_role("button", name="Move to this time").click()
    await page.wait_for_url("**/portal/requests/**")
    await mark_no_reload(page)
    done = page.locator("[data-window]")
    await done.wait_for()
    assert (await done.inner_text()) == picked
    await assert_no_reload(page)
    await page.goto(portal.url + "/portal/jobs")
    for key, text in before.items():
        assert await page.locator(f'[data-appointment-id="{portal.apt(key)}"]').inner_text() == text
    await shot(page, "construction-jobs", viewport)


async def test_another_projects_contact_cannot_reach_the_install_by_url(portal: Portal, new_page, viewport):
    """lead-hal leads the developer's annex, not its tower: the tower's floor 2 is not found for him."""
    page = await new_page()
    await sign_in(page, portal, "skyline-build", "lead-hal", as_="Project contact")
    await page.wait_for_url("**/portal/jobs")
    assert await page.locator(f'[data-appointment-id="{portal.apt("annex-1")}"]').count() == 1
    assert await page.locator(f'[data-appointment-id="{portal.apt("floor-2")}"]').count() == 0
    response = await page.goto(portal.url + f"/portal/appointments/{portal.apt('floor-2')}/modify")
    assert response is not None and response.status == 404


async def test_commercial_cancel_offers_the_business_reasons(portal: Portal, new_page, viewport):
    """metro-hvac keeps a list of cancel reasons: the form offers them as a choice, and the chosen one
    passes the gate."""
    page = await new_page()
    await sign_in(page, portal, "metro-hvac", "pm-carla")
    await open_job(page, portal, "rtu-1")
    await page.get_by_role("link", name="Modify").click()
    reason = page.get_by_label("Why are you canceling?")
    assert await reason.evaluate("e => e.tagName") == "SELECT"
    options = [o.strip() for o in await reason.locator("option").all_inner_texts()]
    assert options == [
        "Choose a reason",
        "Tenant moved out",
        "Work no longer needed",
        "Chose another company",
    ]
    assert await reason.evaluate("e => e.required")
    await reason.select_option("Tenant moved out")
    await shot(page, "cancel-reasons", viewport)
    await page.get_by_role("button", name="Cancel the appointment").click()
    await page.wait_for_url("**/portal/requests/**")
    await page.get_by_text("Your appointment is canceled.").wait_for()


async def test_a_customer_cannot_reach_another_customers_appointment_by_url(
    portal: Portal, new_page, viewport
):
    page = await new_page()
    await sign_in(page, portal, "sunny-plumbing", "home-ana")
    for path in (
        f"/portal/jobs/{portal.job('drain')}",
        f"/portal/appointments/{portal.apt('drain')}/modify",
    ):
        response = await page.goto(portal.url + path)
        assert response.status == 404, path
        await page.get_by_role("heading", name="Not found").wait_for()
        assert "home-ben" not in await page.content()


async def test_the_office_board_shows_a_customers_cancel_within_a_second(portal: Portal, new_page, viewport):
    board = await new_page()
    await sign_in(board, portal, "metro-hvac", "@office")
    await board.wait_for_url("**/office")
    await board.wait_for_function("document.getElementById('live').dataset.connected === '1'")
    await board.evaluate("window.__sameDocument = true")
    row = board.locator(f'tr[data-appointment-id="{portal.apt("rtu-1")}"]')
    assert (await row.locator("[data-status]").inner_text()) == "scheduled"

    customer = await new_page()
    await sign_in(customer, portal, "metro-hvac", "pm-carla")
    await open_job(customer, portal, "rtu-1")
    await customer.get_by_role("link", name="Modify").click()
    await customer.get_by_label("Why are you canceling?").select_option("Tenant moved out")
    clicked = time.monotonic()
    await customer.get_by_role("button", name="Cancel the appointment").click()
    await board.wait_for_function(
        f"""document.querySelector('tr[data-appointment-id="{portal.apt("rtu-1")}"] [data-status]')
            ?.textContent.trim() === 'canceled'""",
        timeout=10_000,
        polling=20,
    )
    seen_after_s = time.monotonic() - clicked
    assert await board.evaluate("window.__sameDocument === true"), "the board was reloaded"
    changed = board.locator(f'tr.changed[data-appointment-id="{portal.apt("rtu-1")}"]')
    assert "pm-carla" in await changed.locator("[data-change]").inner_text()
    await shot(board, "office-board", viewport)
    assert seen_after_s <= 1.0, f"the board showed the cancel {seen_after_s:.2f} s after the click"


async def test_the_approval_flow_from_both_sides(portal: Portal, new_page, viewport):
    customer = await new_page()
    await sign_in(customer, portal, "skyline-build", "dev-corp")
    await open_job(customer, portal, "panel")
    await customer.get_by_role("link", name="Modify").click()
    assert "approves" in await customer.locator("form").first.inner_text()
    await customer.get_by_role("radio").first.check()
    await customer.get_by_role("button", name="Move to this time").click()
    await customer.wait_for_url("**/portal/requests/**")
    await customer.get_by_text("waiting for the office").wait_for()
    await customer.evaluate("window.__sameDocument = true")
    await shot(customer, "waiting-for-office", viewport)

    office = await new_page()
    await sign_in(office, portal, "skyline-build", "@office")
    await office.wait_for_url("**/office")
    approve = office.get_by_role("button", name="Approve")
    await approve.wait_for()
    await shot(office, "approval-queue", viewport)
    await approve.click()
    await office.wait_for_url("**/office")

    await customer.locator("[data-window]").wait_for()
    assert "Your appointment is now" in await customer.locator("#request").inner_text()
    assert await customer.evaluate("window.__sameDocument === true")
    await office.get_by_text("Nothing waiting.").wait_for()
