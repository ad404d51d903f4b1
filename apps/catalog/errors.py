"""Catalog business errors (the API renders each as a problem; the admin shows it on
the form)."""

from apps.core.errors import Conflict, InvalidState, NotFound


class OutOfStock(Conflict):
    problem_type = "out-of-stock"
    title = "Not enough stock"

    def __init__(self, product_ids: list[int], available: dict[int, int] | None = None) -> None:
        super().__init__(
            f"Not enough stock for product(s) {', '.join(map(str, product_ids))}.",
            extra={"product_ids": product_ids},
        )
        self.product_ids = product_ids
        # product id -> units that could still be reserved when this was raised
        self.available = available or {}


class ProductUnavailable(Conflict):
    problem_type = "product-unavailable"
    title = "Product unknown or inactive"

    def __init__(self, product_ids: list[int]) -> None:
        super().__init__(
            f"Product(s) {', '.join(map(str, product_ids))} cannot be sold.",
            extra={"product_ids": product_ids},
        )
        self.product_ids = product_ids


class ReservationsNotMade(Conflict):
    """A batch of reservations (or sales) could not be made as a whole: nothing was
    written. Each one alone says which failed and why."""

    problem_type = "reservations-not-made"
    title = "Reservations not made together"


class ProductNotFound(NotFound):
    problem_type = "product-not-found"
    title = "Product not found"


class CategoryNotFound(NotFound):
    problem_type = "category-not-found"
    title = "Category not found"


class ProductExists(Conflict):
    problem_type = "product-exists"
    title = "A product with this SKU or slug exists"


class CategoryExists(Conflict):
    problem_type = "category-exists"
    title = "A category with this slug exists"


class ReservationNotFound(NotFound):
    problem_type = "reservation-not-found"
    title = "Reservation not found"


class ReservationMismatch(Conflict):
    problem_type = "reservation-mismatch"
    title = "Reference already reserved other items"


class ReservationReleased(InvalidState):
    problem_type = "reservation-released"
    title = "Reservation was released"


class ReservationCommitted(InvalidState):
    problem_type = "reservation-committed"
    title = "Reservation was committed"


class StockBelowReserved(InvalidState):
    problem_type = "stock-below-reserved"
    title = "Stock would drop below the reserved units"
