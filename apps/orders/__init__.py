"""Orders context: the event-sourced order aggregate and its read model (issue: orders)."""
