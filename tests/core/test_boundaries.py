"""No foreign key, one-to-one or many-to-many crosses two bounded contexts."""

from django.apps import apps

CONTEXTS = {"core", "users", "catalog", "orders", "payments"}


def cross_context_relations() -> list[str]:
    found = []
    for model in apps.get_models():
        source = model._meta.app_label
        if source not in CONTEXTS:
            continue
        for field in model._meta.get_fields(include_hidden=True):
            if not field.is_relation or field.related_model is None or field.auto_created:
                continue
            target = field.related_model._meta.app_label
            if target in CONTEXTS and target != source:
                found.append(
                    f"{model._meta.label}.{field.name} -> {field.related_model._meta.label}"
                )
    return found


def test_no_model_relation_crosses_two_contexts():
    assert cross_context_relations() == []


def test_the_relation_walk_sees_relations_within_a_context():
    # Guards the walk itself: the users context's own relation must be visible to it.
    address = apps.get_model("users", "Address")
    relations = [f.name for f in address._meta.get_fields() if f.is_relation and not f.auto_created]
    assert "user" in relations
