import pytest

from apps.catalog.models import Reservation, Stock
from apps.catalog.services import reservation_commit, reservation_return, stock_reserve
from apps.core.errors import InvalidState
from tests.catalog.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_returning_sold_units_puts_them_back_on_hand_once():
    product = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-r1", items=[(product.pk, 2)])
    reservation_commit(reference="order-r1")
    reservation_return(reference="order-r1")
    reservation_return(reference="order-r1")
    stock = Stock.objects.get(product=product)
    assert (stock.on_hand, stock.reserved) == (5, 0)
    assert Reservation.objects.get(reference="order-r1").status == "returned"


def test_units_not_sold_cannot_be_returned():
    product = ProductFactory(stock__on_hand=5)
    stock_reserve(reference="order-r2", items=[(product.pk, 1)])
    with pytest.raises(InvalidState):
        reservation_return(reference="order-r2")
    assert Stock.objects.get(product=product).on_hand == 5
