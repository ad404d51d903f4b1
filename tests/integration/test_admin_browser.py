"""The admin in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver (no downloaded browser), against a live server on loopback.

A failing test leaves a screenshot and the page source under test-artifacts/.
"""

import importlib
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from apps.catalog import services as catalog_services
from apps.catalog.models import Product, StockAdjustment
from apps.orders.models import OrderSummary
from apps.users.roles import CATALOG_MANAGERS, ORDER_MANAGERS
from tests.orders.conftest import confirm, place_order
from tests.support.replica import wait_for_catch_up
from tests.users.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_SECONDS = 10
# The role permissions exactly as the migrations grant them (a transactional test's
# flush removed the groups).
ROLE_PERMISSIONS = {
    CATALOG_MANAGERS: (
        "catalog",
        importlib.import_module(
            "apps.catalog.migrations.0003_catalog_managers_permissions"
        ).PERMISSIONS,
    ),
    ORDER_MANAGERS: (
        "orders",
        importlib.import_module("apps.orders.migrations.0002_staff_permissions").ROLE_PERMISSIONS[
            ORDER_MANAGERS
        ],
    ),
}


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "install Debian's chromium and chromium-driver (make test does)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, live_server, request):
    """The browser with no session, and a screenshot of the page when the test fails."""
    browser.delete_all_cookies()
    browser.base_url = live_server.url
    yield browser
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name.replace("/", "_")
        browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
        (ARTIFACTS / f"{name}.html").write_text(browser.page_source)


@transaction.atomic  # on the primary: the replica may not have replayed the permissions yet
def staff_member(role: str):
    app_label, codenames = ROLE_PERMISSIONS[role]
    permissions = Permission.objects.filter(
        content_type__app_label=app_label, codename__in=codenames
    )
    assert len(permissions) == len(codenames)
    group, _ = Group.objects.get_or_create(name=role)
    group.permissions.add(*permissions)
    user = UserFactory(is_staff=True)
    user.groups.add(group)
    return user


def settled() -> None:
    """The replica has what the test wrote: the server's reads may go there."""
    wait_for_catch_up(settings.DATABASE_REPLICAS[0])


def wait_for_text(driver, text: str) -> None:
    WebDriverWait(driver, WAIT_SECONDS).until(
        expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), text)
    )


def log_in(driver, user) -> None:
    driver.get(f"{driver.base_url}/admin/login/?next=/admin/")
    driver.find_element(By.NAME, "username").send_keys(user.email)
    driver.find_element(By.NAME, "password").send_keys(DEFAULT_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def test_order_manager_finds_ships_an_order_and_sees_its_history(page):
    order_id = str(place_order(UserFactory()).pk)
    confirm(order_id)
    place_order(UserFactory())  # another order, for the search to tell apart
    manager = staff_member(ORDER_MANAGERS)
    settled()

    log_in(page, manager)
    wait_for_text(page, "Site administration")
    page.get(f"{page.base_url}/admin/orders/ordersummary/")
    search = page.find_element(By.ID, "searchbar")
    search.send_keys(order_id)
    search.submit()
    wait_for_text(page, "1 order")

    rows = page.find_elements(By.CSS_SELECTOR, "#result_list input[name=_selected_action]")
    assert [row.get_attribute("value") for row in rows] == [order_id]
    rows[0].click()
    Select(page.find_element(By.NAME, "action")).select_by_value("ship_order")
    page.find_element(By.NAME, "tracking_number").send_keys("TRK-BROWSER-1")
    page.find_element(By.NAME, "carrier").send_keys("DHL")
    page.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait_for_text(page, "shipped (DHL TRK-BROWSER-1)")

    page.find_element(By.LINK_TEXT, order_id).click()
    wait_for_text(page, "Timeline")
    history = page.find_element(By.CSS_SELECTOR, "#order-timeline").text
    for event in ("Placed:", "Confirmed", "Shipped with DHL, tracking number TRK-BROWSER-1"):
        assert event in history
    assert OrderSummary.objects.get(pk=order_id).status == "shipped"


def test_catalog_manager_edits_a_price_and_adjusts_stock(page):
    product = catalog_services.product_create(
        sku="BRW-1", name="Browser lamp", price=Decimal("19.99"), currency="EUR", initial_stock=4
    )
    manager = staff_member(CATALOG_MANAGERS)
    settled()

    log_in(page, manager)
    wait_for_text(page, "Site administration")
    page.get(f"{page.base_url}/admin/catalog/product/{product.pk}/change/")
    price = page.find_element(By.ID, "id_price")
    price.clear()
    price.send_keys("24.50")
    # The blank adjustment row below the recorded ones (the initial stock).
    new_row = "input[name^=adjustments-][name$=-{}]:not([name*=__prefix__])"
    page.find_element(By.CSS_SELECTOR, new_row.format("delta")).send_keys("6")
    page.find_element(By.CSS_SELECTOR, new_row.format("reason")).send_keys(
        "delivery from the supplier"
    )
    page.find_element(By.NAME, "_save").click()
    wait_for_text(page, "was changed successfully")

    product = Product.objects.select_related("stock").get(pk=product.pk)
    assert product.price == Decimal("24.50")
    assert product.stock.on_hand == 10
    adjustment = StockAdjustment.objects.filter(product=product).order_by("-id").first()
    assert (adjustment.delta, adjustment.reason, adjustment.actor_id) == (
        6,
        "delivery from the supplier",
        manager.pk,
    )


def test_a_customer_cannot_enter_the_admin(page):
    customer = UserFactory()
    settled()

    log_in(page, customer)
    wait_for_text(page, "Please enter the correct")
    assert "/admin/login/" in page.current_url
    page.get(f"{page.base_url}/admin/orders/ordersummary/")
    assert "/admin/login/" in page.current_url
    assert page.find_elements(By.ID, "searchbar") == []
