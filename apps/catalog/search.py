"""Product search: PostgreSQL full text (name above description, web-search syntax)
with a trigram fallback for typos; a plain substring match on other databases (SQLite
in `make run`)."""

from django.contrib.postgres.lookups import TrigramWordSimilar
from django.contrib.postgres.search import (
    SearchQuery,
    SearchRank,
    SearchVector,
    TrigramWordSimilarity,
)
from django.db import connection
from django.db.models import F, Q, QuerySet, Value

SEARCH_CONFIG = "english"
RELEVANCE = "relevance"


def product_search_vector() -> SearchVector:
    # Must match the GIN index expression of migration 0002 exactly.
    return SearchVector("name", weight="A", config=SEARCH_CONFIG) + SearchVector(
        "description", weight="B", config=SEARCH_CONFIG
    )


def search_products(queryset: QuerySet, text: str) -> QuerySet:
    """Filter to matches and annotate `relevance` (higher is better)."""
    if connection.vendor != "postgresql":
        matches = queryset.filter(Q(name__icontains=text) | Q(description__icontains=text))
        # No ranking here: "relevance" is the id (newest first), unique for cursor pages.
        return matches.annotate(**{RELEVANCE: F("id")})
    query = SearchQuery(text, search_type="websearch", config=SEARCH_CONFIG)
    full_text = queryset.annotate(document=product_search_vector()).filter(document=query)
    if full_text.exists():
        return full_text.annotate(**{RELEVANCE: SearchRank(F("document"), query)})
    # No word matched: tolerate typos in the name. Only as a fallback, so that a
    # web-search exclusion ("-glass") is never undone by a similar-looking name.
    return queryset.filter(TrigramWordSimilar(F("name"), Value(text))).annotate(
        **{RELEVANCE: TrigramWordSimilarity(text, "name")}
    )
