"""The admin as staff use it in production: gunicorn with DJANGO_ENV=production, the
static files that `collectstatic` wrote served by whitenoise, Debian's headless
Chromium, a real Celery worker and the sandbox PSP.

Every static file a page loads must answer 200 (read from the browser's network log).
Screenshots of the index, the order page and a product page are left under
var/screenshots/ for a reviewer (var/ is not committed).
"""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from apps.catalog import services as catalog_services
from apps.catalog.models import Product
from apps.orders.models import OrderSummary
from apps.payments.models import Payment
from apps.users.roles import CATALOG_MANAGERS, ORDER_MANAGERS
from tests.conftest import bearer_client
from tests.integration.test_admin_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    settled,
    staff_member,
    wait_for_text,
)
from tests.integration.test_gunicorn import Gunicorn
from tests.orders.test_placement_saga import place, wait_for_outcome
from tests.support.celery_worker import wait_until
from tests.support.sandbox import fast_saga_settings
from tests.users.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
WAIT_SECONDS = 30
PRODUCTION = {
    "DJANGO_ENV": "production",
    "SECRET_KEY": "browser-test-only-" + "k" * 48,
    "ALLOWED_HOSTS": "localhost,127.0.0.1",
    # Plain HTTP on loopback: no TLS proxy in front of this test.
    "SECURE_SSL_REDIRECT": "False",
    "SECURE_HSTS_SECONDS": "0",
    "LOG_FORMAT": "console",
}


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    """What the image's build step does: collectstatic with the production storage."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, **PRODUCTION, "STATIC_ROOT": str(root)},
        check=True,
    )
    assert (root / "staticfiles.json").exists()
    return root


@pytest.fixture
def saga_settings(settings, sandbox):
    values = fast_saga_settings(sandbox)
    for name, value in values.items():
        setattr(settings, name, value)
    return {name: str(value) for name, value in values.items()}


@pytest.fixture
def production_server(django_db_setup, static_root, saga_settings, tmp_path):
    server = Gunicorn(
        "config.wsgi:application",
        tmp_path,
        workers=2,
        env={**PRODUCTION, **saga_settings, "STATIC_ROOT": str(static_root)},
    )
    try:
        server.wait_ready()
        server.url = server.url.replace("127.0.0.1", "localhost")  # a secure context
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def production_login(user):
    """The user, with a password hash production can check (the tests hash with MD5)."""
    user.password = PBKDF2PasswordHasher().encode(DEFAULT_PASSWORD, "browser-salt", 1000)
    user.save(update_fields=["password"])
    return user


def static_responses(driver) -> dict[str, int]:
    """URL -> status of every /static/ response since the last call (the network log)."""
    found = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if "/static/" in response["url"]:
                found[response["url"]] = response["status"]
    return found


def log_in(driver, base_url: str, user) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base_url}/admin/login/?next=/admin/")
    driver.find_element(By.NAME, "username").send_keys(user.email)
    driver.find_element(By.NAME, "password").send_keys(DEFAULT_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for_text(driver, "Site administration")


def screenshot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def test_staff_work_an_order_in_production_with_every_static_file_served(
    production_server, browser, start_celery_worker, saga_settings
):
    worker = start_celery_worker(env=saga_settings)
    lamp = catalog_services.product_create(
        sku="LAMP-PROD", name="Brass lamp", price=Decimal("25.00"), currency="EUR",
        initial_stock=5,
    )  # fmt: skip
    customer = UserFactory(email="ada@shop.example")
    order_id = place(bearer_client(customer), [(lamp, 1)])
    assert wait_for_outcome(order_id).status == "confirmed"
    manager = production_login(staff_member(ORDER_MANAGERS))
    catalog_manager = production_login(staff_member(CATALOG_MANAGERS))
    settled()
    base = production_server.url
    served: dict[str, int] = {}

    # Find the order by the customer's e-mail.
    log_in(browser, base, manager)
    browser.get(f"{base}/admin/orders/ordersummary/?q=ada%40shop.example")
    wait_for_text(browser, "1 order")
    served |= static_responses(browser)
    browser.find_element(By.LINK_TEXT, order_id).click()
    wait_for_text(browser, "Timeline")
    timeline = text_of(browser, "#order-timeline")
    assert "Payment of 25.00 EUR captured" in timeline and "Confirmed" in timeline
    assert "ada@shop.example" in text_of(browser, "#order-overview")
    assert "LAMP-PROD" in text_of(browser, "#order-items")

    # Refund 10.00 of it from the order page: one message, and the order follows.
    browser.find_element(By.CSS_SELECTOR, "#refund-form [name=amount]").send_keys("10.00")
    browser.find_element(By.CSS_SELECTOR, "#refund-form [name=reason]").send_keys("scratched")
    browser.find_element(By.CSS_SELECTOR, "#refund-form [type=submit]").click()
    wait_for_text(browser, "Refunded 10.00 EUR")
    assert len(browser.find_elements(By.CSS_SELECTOR, "ul.messagelist li")) == 1

    def refund_in_timeline() -> bool:
        browser.refresh()
        return "Refunded 10.00 EUR" in text_of(browser, "#order-timeline")

    try:
        wait_until(refund_in_timeline, timeout=WAIT_SECONDS, interval=0.5, what="the refund")
    except AssertionError:
        raise AssertionError(worker.log_tail(60)) from None

    # Ship it.
    browser.find_element(By.CSS_SELECTOR, "#ship-form [name=tracking_number]").send_keys("TRK-77")
    browser.find_element(By.CSS_SELECTOR, "#ship-form [name=carrier]").send_keys("DHL")
    browser.find_element(By.CSS_SELECTOR, "#ship-form [type=submit]").click()
    wait_for_text(browser, "Shipped with DHL, tracking number TRK-77.")
    assert "Shipped with DHL, tracking number TRK-77" in text_of(browser, "#order-timeline")
    served |= static_responses(browser)
    screenshot(browser, "order_page")
    summary = OrderSummary.objects.get(pk=order_id)
    payment = Payment.objects.get(order_id=order_id)
    assert (summary.status, summary.refunded_amount) == ("shipped", Decimal("10.00"))
    assert payment.amount_refunded == Decimal("10.00")

    browser.get(f"{base}/admin/")
    wait_for_text(browser, "Orders today")
    screenshot(browser, "index")
    served |= static_responses(browser)

    # A product with a slug the service refuses: a form error, not a server error.
    log_in(browser, base, catalog_manager)
    browser.get(f"{base}/admin/catalog/product/add/")
    for name, value in (("sku", "BAD-SLUG"), ("name", "Numbers"), ("price", "1.00")):
        browser.find_element(By.NAME, name).send_keys(value)
    slug = browser.find_element(By.NAME, "slug")
    slug.clear()
    slug.send_keys("12345")
    browser.find_element(By.NAME, "_save").click()
    wait_for_text(browser, "Please correct the error below.")
    assert "not only digits" in text_of(browser, ".field-slug")
    assert not Product.objects.filter(sku="BAD-SLUG").exists()
    browser.get(f"{base}/admin/catalog/product/{lamp.pk}/change/")
    wait_for_text(browser, "Brass lamp")
    screenshot(browser, "product_page")
    served |= static_responses(browser)

    # The offline API docs.
    browser.get(f"{base}/api/docs/")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .info")
    )
    served |= static_responses(browser)

    assert served, "no static file was loaded"
    assert {url: status for url, status in served.items() if status != 200} == {}
    loaded = " ".join(served)
    assert "/static/admin/css/base." in loaded  # hashed names (the manifest)
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle." in loaded
    some_css = next(url for url in served if url.endswith(".css"))
    compressed = httpx.get(some_css, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert "max-age=315360000" in compressed.headers["Cache-Control"]  # immutable
