"""Events between contexts and to the outside: the transactional outbox and its relay,
the inbox (at-most-once handling per consumer), the registry of published event types,
and webhooks (signed, retried deliveries to outside subscribers)."""
