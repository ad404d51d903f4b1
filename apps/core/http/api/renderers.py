"""The renderer of problem details (`application/problem+json`)."""

from rest_framework.renderers import JSONRenderer


class ProblemJSONRenderer(JSONRenderer):
    """Lets clients that ask only for `application/problem+json` be answered."""

    media_type = "application/problem+json"
