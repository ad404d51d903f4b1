"""OpenAPI post-processing: every operation documents the problem responses it can give.

drf-spectacular documents only the success responses a view declares; errors come from
one handler (apps.core.http.api.problems) for every view, so they are added here once, as
`4XX`/`5XX` ranges of `application/problem+json` (RFC 9457).
"""

from typing import Any

PROBLEM_COMPONENT = "Problem"
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string", "description": "A URI reference naming the problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "code": {
            "type": "string",
            "description": "Why authentication failed (401): `token_expired`, `token_invalid`...",
        },
        "errors": {
            "type": "object",
            "description": "Validation messages by field path (`items.0.quantity`).",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
    "required": ["type", "title", "status", "detail"],
}
PROBLEM_RESPONSES = {
    "4XX": "The request was refused: invalid, unauthenticated, forbidden, not found, "
    "in conflict with the resource's state, or of an unsupported method or media type.",
    "5XX": "The server or a dependency (the payment provider) failed.",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def add_problem_responses(
    result: dict[str, Any], generator: object, request: object, public: bool
) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})[PROBLEM_COMPONENT] = (
        PROBLEM_SCHEMA
    )
    content = {
        "application/problem+json": {
            "schema": {"$ref": f"#/components/schemas/{PROBLEM_COMPONENT}"}
        }
    }
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status_range, description in PROBLEM_RESPONSES.items():
                responses.setdefault(status_range, {"description": description, "content": content})
    return result
