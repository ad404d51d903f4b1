"""What every context's admin shares: one validation path through the services.

The admin's forms check only the shape of the input (a number, a date); the rules live
in the services. A `DomainError` a service raises while the admin saves is shown on the
form it came from (a field's error when the service named the field), and nothing of
that save is kept; an action's outcome is one message, an error or a success.
"""

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import structlog
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from apps.core.errors import DomainError, ValidationFailed

logger = structlog.get_logger(__name__)

# Service argument names that the admin's forms call differently.
FORM_FIELD_FOR_ARGUMENT = {"category_id": "category", "parent_id": "parent"}


def form_errors(error: DomainError, *, fields: Container[str]) -> list[tuple[str | None, str]]:
    """(form field or None for the whole form, message) pairs for a service's error."""
    if not isinstance(error, ValidationFailed):
        return [(None, error.detail)]
    found: list[tuple[str | None, str]] = []
    for argument, messages_ in error.errors.items():
        name = FORM_FIELD_FOR_ARGUMENT.get(argument, argument)
        for message in messages_:
            if name in fields:
                found.append((name, message))
            else:
                found.append((None, f"{argument}: {message}"))
    return found or [(None, error.detail)]


class ServiceFormAdmin(admin.ModelAdmin):
    """A change form whose save runs services: their errors become form errors.

    The admin saves inside one transaction; a `DomainError` rolls it back, and the form
    is validated once more with the service's errors added, so it is shown again with
    them (the same page a field error gives) instead of a server error.
    """

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except DomainError as error:
            request.service_error = error  # type: ignore[attr-defined]  # read by get_form
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> "type[forms.ModelForm[Any]]":
        form_class = super().get_form(request, obj, change=change, **kwargs)
        service_error: DomainError | None = getattr(request, "service_error", None)
        if service_error is None:
            return form_class
        error = service_error

        # A subclass of whichever form the admin built (mypy cannot follow a dynamic base).
        class FormWithServiceError(form_class):  # type: ignore[valid-type,misc]
            def clean(self) -> dict[str, Any]:
                cleaned_data: dict[str, Any] = super().clean()
                for field, message in form_errors(error, fields=self.fields):
                    self.add_error(field, message)
                return cleaned_data

        return FormWithServiceError


class ActionsOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through actions (services): the change page is for reading,
    and a POST to it is refused rather than saving the row as it stands."""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST":
            raise PermissionDenied
        return super().change_view(request, object_id, form_url, extra_context)


def report_outcome(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    call: Callable[[], Any],
    success: Callable[[Any], str],
    *,
    subject: str = "",
) -> bool:
    """Run one service call for an action; one message says how it went."""
    prefix = f"{subject}: " if subject else ""
    try:
        result = call()
    except DomainError as error:
        detail = "; ".join(message for _, message in form_errors(error, fields=()))
        model_admin.message_user(request, f"{prefix}{detail}", messages.ERROR)
        return False
    model_admin.message_user(request, f"{prefix}{success(result)}", messages.SUCCESS)
    return True


# --- What staff see first -----------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One figure of the admin index, linking to the filtered list behind it."""

    label: str
    value: str
    url: str
    alert: bool = False  # shown as a warning: something wants a look
    permission: str = ""  # shown only to staff who may see the list behind it


_figures: list[tuple[int, Callable[[], list[Figure]]]] = []


def index_figures(*, order: int) -> Callable[..., Any]:
    """Register a function giving figures for the admin index (each context's admin)."""

    def register(func: Callable[[], list[Figure]]) -> Callable[[], list[Figure]]:
        _figures.append((order, func))
        return func

    return register


def collect_figures() -> list[Figure]:
    figures = []
    for _, func in sorted(_figures, key=lambda entry: entry[0]):
        try:
            figures.extend(func())
        except Exception:  # the index must render even when one source is down
            logger.exception("admin_index_figure_failed", figure=func.__qualname__)
            figures.append(Figure(func.__doc__ or func.__name__, "unavailable", "", alert=True))
    return figures


def age(seconds: float) -> str:
    """A duration as staff read it: 45 s, 12 min, 3 h, 2 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


class StaffAdminSite(admin.AdminSite):
    """The admin, whose index starts with the figures that say how the shop is doing."""

    index_template = "admin/staff_index.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        figures = [
            figure
            for figure in collect_figures()
            if not figure.permission or request.user.has_perm(figure.permission)
        ]
        return super().index(request, {**(extra_context or {}), "figures": figures})
