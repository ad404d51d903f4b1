"""Catalog context: categories, products, stock and reservations (issue: catalog)."""
