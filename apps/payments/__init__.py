"""Payments context: payments, refunds and the provider gateway (issue: payments)."""
