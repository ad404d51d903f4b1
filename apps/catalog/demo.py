"""Demo catalog for `make run`: nested categories, a few hundred products, some sales.

Deterministic (a fixed seed) and idempotent (categories by slug, products by SKU,
sales by reservation reference).
"""

import random
from decimal import Decimal

from django.utils.text import slugify

from apps.catalog import errors, selectors, services
from apps.core.demo import demo_seeder

SEED = 2026
PRODUCTS_PER_LEAF = 16
DEMO_SALES = 25

# root -> child -> grandchildren
TREE = {
    "Home & Kitchen": {
        "Kitchen": ["Cookware", "Knives", "Small appliances"],
        "Furniture": ["Chairs", "Tables"],
    },
    "Electronics": {
        "Audio": ["Headphones", "Speakers"],
        "Computers": ["Laptops", "Keyboards", "Monitors"],
    },
    "Outdoors": {
        "Camping": ["Tents", "Sleeping bags"],
        "Garden": ["Tools", "Planters"],
    },
    "Sports": {
        "Fitness": ["Weights", "Yoga"],
        "Cycling": ["Helmets", "Lights"],
    },
}
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Ergonomic", "Pro", "Smart", "Travel"]
MATERIALS = ["bamboo", "steel", "oak", "aluminium", "ceramic", "recycled plastic", "cotton"]
COLOURS = ["black", "white", "red", "blue", "green", "grey"]
SINGULAR = {"Knives": "knife", "Yoga": "yoga mat", "Headphones": "headphones", "Cookware": "pan"}


@demo_seeder(order=20)
def seed_catalog() -> list[str]:
    rng = random.Random(SEED)
    leaves = _seed_categories()
    rows = []
    for leaf_slug, leaf_name, leaf_id in leaves:
        singular = SINGULAR.get(leaf_name, leaf_name.rstrip("s"))
        for number in range(1, PRODUCTS_PER_LEAF + 1):
            adjective, material = rng.choice(ADJECTIVES), rng.choice(MATERIALS)
            name = f"{adjective} {material} {singular.lower()} {number}"
            rows.append(
                services.ProductRow(
                    sku=f"DEMO-{leaf_slug.upper()}-{number:03d}",
                    name=name[:1].upper() + name[1:],
                    price=Decimal(rng.randrange(199, 49999)) / 100,
                    currency="EUR",
                    category_id=leaf_id,
                    description=(
                        f"A {rng.choice(COLOURS)} {singular.lower()} made of {material}. "
                        f"{adjective} design for everyday use."
                    ),
                    stock=rng.choice([0, 3, 10, 25, 50, 100]),
                )
            )
    created, _ = services.products_import(rows=rows, reason="demo data")
    sold = _seed_sales(rng, [row.sku for row in rows])
    return [
        f"catalog: {len(leaves)} leaf categories, {len(rows)} products "
        f"({created} new), {sold} demo sales"
    ]


def _seed_categories() -> list[tuple[str, str, int]]:
    existing = selectors.category_ids_by_slug()

    def ensure(name: str, parent_id: int | None, position: int) -> int:
        slug = slugify(name)
        if slug not in existing:
            existing[slug] = services.category_create(
                name=name, slug=slug, parent_id=parent_id, position=position
            ).pk
        return existing[slug]

    leaves = []
    for root_position, (root, children) in enumerate(TREE.items()):
        root_id = ensure(root, None, root_position)
        for child_position, (child, grandchildren) in enumerate(children.items()):
            child_id = ensure(child, root_id, child_position)
            for position, leaf in enumerate(grandchildren):
                leaves.append((slugify(leaf), leaf, ensure(leaf, child_id, position)))
    return leaves


def _seed_sales(rng: random.Random, skus: list[str]) -> int:
    snapshots = selectors.product_ids_by_sku(skus=skus)
    sold = 0
    for number in range(DEMO_SALES):
        product_id = snapshots[rng.choice(skus)]
        reference = f"demo-sale-{number}"
        try:
            services.stock_reserve(reference=reference, items=[(product_id, 1)])
            services.reservation_commit(reference=reference)
        except errors.OutOfStock:
            continue
        sold += 1
    return sold
