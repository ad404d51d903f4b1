"""Product search: PostgreSQL full text (name above description) plus trigram typo
tolerance; a plain substring match on other databases (SQLite in `make run`)."""

from django.contrib.postgres.search import (
    SearchQuery,
    SearchRank,
    SearchVector,
    TrigramWordSimilarity,
)
from django.db import connection
from django.db.models import F, Q, QuerySet

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
        return matches.annotate(**{RELEVANCE: F("id") * 0})
    query = SearchQuery(text, search_type="websearch", config=SEARCH_CONFIG)
    return (
        queryset.annotate(
            document=product_search_vector(),
            typo_similarity=TrigramWordSimilarity(text, "name"),
        )
        .filter(
            # `<%` (word similarity) uses the trigram index; `@@` the full-text one.
            Q(document=query) | Q(name__trigram_word_similar=text)
        )
        .annotate(**{RELEVANCE: SearchRank(F("document"), query) + F("typo_similarity")})
    )
