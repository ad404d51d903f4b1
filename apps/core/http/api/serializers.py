"""Base serializers of the API: strict input (unknown fields, non-string strings and
out-of-range integers refused) and output fields built once per class."""

from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

# Every integer a client sends ends up in a bigint column or lookup at most: larger
# values are refused as invalid input, never passed on to the database to overflow.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def _bound_to_bigint(field: serializers.IntegerField) -> None:
    if field.max_value is None or field.max_value > BIGINT_MAX:
        field.max_value = BIGINT_MAX
        message = field.error_messages["max_value"].format(max_value=BIGINT_MAX)
        field.validators.append(MaxValueValidator(BIGINT_MAX, message=message))
    if field.min_value is None or field.min_value < BIGINT_MIN:
        field.min_value = BIGINT_MIN
        message = field.error_messages["min_value"].format(min_value=BIGINT_MIN)
        field.validators.append(MinValueValidator(BIGINT_MIN, message=message))


class StrictSerializerMixin(serializers.Serializer):
    """Input as it was meant: fields the serializer does not know are refused instead of
    silently ignored, a string field takes only a JSON string (not `42` as "42"), and
    an integer field only what fits a bigint."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for field in fields.values():
            integer = getattr(field, "child", field)  # a list of integers too
            if isinstance(integer, serializers.IntegerField) and not integer.read_only:
                _bound_to_bigint(integer)
        return fields

    def to_internal_value(self, data: Any) -> Any:
        refused: dict[str, list[str]] = {}
        if isinstance(data, dict):
            writable = {name: field for name, field in self.fields.items() if not field.read_only}
            refused = {name: ["Unknown field."] for name in sorted(set(data) - set(writable))}
            refused.update(
                (name, ["Not a valid string."])
                for name, field in writable.items()
                if isinstance(field, serializers.CharField)
                and data.get(name) is not None
                and not isinstance(data[name], str)
            )
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            # Report these together with the other field errors.
            if refused and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **refused}) from exc
            raise
        if refused:
            raise serializers.ValidationError(refused)
        return value


class StrictSerializer(StrictSerializerMixin, serializers.Serializer):
    pass


class StrictModelSerializer(StrictSerializerMixin, serializers.ModelSerializer):
    pass


class SharedFieldsMixin(serializers.Serializer):
    """Output serializers whose fields are built once per class, not per instance.

    DRF deep-copies (and for a ModelSerializer, derives from the model) every field of
    every serializer instance; for a response rendered per request that is most of its
    cost. Only for serializers whose fields read nothing from the context or the request.
    """

    @property
    def fields(self) -> BindingDict:
        cls = type(self)
        shared = cls.__dict__.get("_shared_fields")
        if shared is None:
            # Bound to a context-free instance of their own, not to a request's.
            shared = super(SharedFieldsMixin, cls()).fields
            cls._shared_fields = shared  # type: ignore[attr-defined]  # set per subclass
        return shared
