"""What every context's admin shares: one validation path through the services.

The admin's forms check only the shape of the input (a number, a date); the rules live
in the services. A `DomainError` a service raises while the admin saves is shown on the
form it came from (a field's error when the service named the field), and nothing of
that save is kept; an action's outcome is one message, an error or a success.
"""

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages

from apps.core.errors import DomainError, ValidationFailed

# Service argument names that the admin's forms call differently.
FORM_FIELD_FOR_ARGUMENT = {"category_id": "category", "parent_id": "parent"}


def form_errors(error: DomainError, *, fields) -> list[tuple[str | None, str]]:
    """(form field or None for the whole form, message) pairs for a service's error."""
    if not isinstance(error, ValidationFailed):
        return [(None, error.detail)]
    found = []
    for argument, messages_ in error.errors.items():
        name = FORM_FIELD_FOR_ARGUMENT.get(argument, argument)
        for message in messages_:
            if name in fields:
                found.append((name, message))
            else:
                found.append((None, f"{argument}: {message}"))
    return found


class ServiceFormAdmin(admin.ModelAdmin):
    """A change form whose save runs services: their errors become form errors.

    The admin saves inside one transaction; a `DomainError` rolls it back, and the form
    is validated once more with the service's errors added, so it is shown again with
    them (the same page a field error gives) instead of a server error.
    """

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except DomainError as error:
            request.service_error = error
            return super().changeform_view(request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "service_error", None)
        if error is None:
            return form_class

        class FormWithServiceError(form_class):
            def clean(self):
                cleaned_data = super().clean()
                for field, message in form_errors(error, fields=self.fields):
                    self.add_error(field, message)
                return cleaned_data

        return FormWithServiceError


def report_outcome(
    model_admin: admin.ModelAdmin,
    request,
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
