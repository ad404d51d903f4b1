"""Typed business errors. Services raise them; the API maps them once to problems."""

from typing import Any


class DomainError(Exception):
    """Base of every business error; `problem_type` becomes the problem's `type`."""

    status = 400
    problem_type = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, *, extra: dict[str, Any] | None = None) -> None:
        self.detail = detail or self.title
        self.extra = extra or {}
        super().__init__(self.detail)


class ValidationFailed(DomainError):
    problem_type = "validation-error"
    title = "Invalid input"

    def __init__(self, errors: dict[str, list[str]], detail: str | None = None) -> None:
        super().__init__(detail or "One or more fields are invalid.", extra={"errors": errors})
        self.errors = errors


class NotFound(DomainError):
    status = 404
    problem_type = "not-found"
    title = "Not found"


class PermissionDenied(DomainError):
    status = 403
    problem_type = "permission-denied"
    title = "Permission denied"


class Conflict(DomainError):
    status = 409
    problem_type = "conflict"
    title = "Conflict"


class InvalidState(Conflict):
    problem_type = "invalid-state"
    title = "Not allowed in the current state"
