"""Staff roles: Django groups that later contexts grant their permissions to."""

CATALOG_MANAGERS = "catalog managers"
ORDER_MANAGERS = "order managers"
SUPPORT = "support"

STAFF_ROLES = (CATALOG_MANAGERS, ORDER_MANAGERS, SUPPORT)
