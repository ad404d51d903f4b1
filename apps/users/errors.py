"""Users business errors."""

from apps.core.errors import Conflict


class EmailAlreadyRegistered(Conflict):
    problem_type = "email-taken"
    title = "Email already registered"
