"""Long-running work across contexts: the saga engine (durable steps, compensations,
leased and fenced claims), driven by Celery."""
