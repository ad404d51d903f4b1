"""The edge of the web process: the request middleware, rate limits, idempotent
requests, who the client is, the liveness/readiness probes, and the API's shared
conventions (`api`: problem details, pagination, parsers, permissions, schema)."""
