"""Staff admin for the catalog. Every write goes through `services`: the admin adds
forms and lists, no rules of its own (a service's error is shown on the form)."""

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import F
from django.urls import reverse

from apps.catalog import selectors, services
from apps.catalog.models import Category, Product, Reservation, Stock, StockAdjustment
from apps.core.errors import ValidationFailed
from apps.core.staff_admin import (
    Figure,
    ServiceFormAdmin,
    form_errors,
    index_figures,
    report_outcome,
)

PRODUCT_FORM_FIELDS = [
    "sku",
    "slug",
    "name",
    "description",
    "category",
    "price",
    "currency",
    "is_active",
    "attributes",
    "image_urls",
]


def _service_fields(form: forms.ModelForm, names) -> dict:
    return {
        ("category_id" if name == "category" else name): (
            form.cleaned_data[name].pk
            if name == "category" and form.cleaned_data[name] is not None
            else form.cleaned_data[name]
        )
        for name in names
    }


class ProductForm(forms.ModelForm):
    currency = forms.ChoiceField(choices=[(c, c) for c in settings.SUPPORTED_CURRENCIES])
    # The slug's rule is the service's: the form checks only that it is text.
    slug = forms.CharField(max_length=160)

    class Meta:
        model = Product
        fields = PRODUCT_FORM_FIELDS

    def clean(self):
        cleaned_data = super().clean()
        if not self._errors:
            # The service's rules, shown on their fields, before the model's own checks
            # (its price constraint) would word them differently.
            try:
                services.product_validate(**_service_fields(self, PRODUCT_FORM_FIELDS))
            except ValidationFailed as error:
                for field, message in form_errors(error, fields=self.fields):
                    self.add_error(field, message)
        return cleaned_data


class StockInline(admin.StackedInline):
    """Read-only: on-hand units change through stock adjustments (with a reason)."""

    model = Stock
    fields = ["on_hand", "reserved", "available"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="available")
    def available(self, stock: Stock) -> int:
        return stock.available


class StockAdjustmentForm(forms.ModelForm):
    class Meta:
        model = StockAdjustment
        fields = ["delta", "reason"]


class StockAdjustmentInline(admin.TabularInline):
    """New rows are adjustments to make; recorded ones are history (read-only)."""

    model = StockAdjustment
    form = StockAdjustmentForm
    extra = 1
    can_delete = False
    fields = ["delta", "reason", "on_hand_after", "actor_id", "created_at"]
    readonly_fields = ["on_hand_after", "actor_id", "created_at"]
    ordering = ["-created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class InStockFilter(admin.SimpleListFilter):
    title = "stock"
    parameter_name = "in_stock"

    def lookups(self, request, model_admin):
        return [
            ("yes", "In stock"),
            ("low", f"Low ({selectors.LOW_STOCK_AVAILABLE} or fewer available)"),
            ("no", "Out of stock"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(stock__on_hand__gt=F("stock__reserved"))
        if self.value() == "low":
            return queryset.filter(pk__in=selectors.low_stock_products().values("pk"))
        if self.value() == "no":
            return queryset.exclude(stock__on_hand__gt=F("stock__reserved"))
        return queryset


@admin.register(Product)
class ProductAdmin(ServiceFormAdmin):
    form = ProductForm
    list_display = ["sku", "name", "category", "price", "currency", "is_active", "available"]
    list_filter = ["is_active", InStockFilter, "category"]
    list_select_related = ["category", "stock"]
    search_fields = ["sku", "name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StockInline, StockAdjustmentInline]
    actions = ["activate", "deactivate"]
    list_per_page = 50

    @admin.display(description="available", ordering="stock__on_hand")
    def available(self, product: Product) -> int:
        return product.stock.available

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # orders and stock history refer to products: deactivate instead

    @admin.action(description="Activate selected products", permissions=["change"])
    def activate(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        report_outcome(
            self,
            request,
            lambda: services.product_set_active(product_ids=ids, is_active=True),
            lambda count: f"Activated {count} product(s).",
        )

    @admin.action(description="Deactivate selected products", permissions=["change"])
    def deactivate(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        report_outcome(
            self,
            request,
            lambda: services.product_set_active(product_ids=ids, is_active=False),
            lambda count: f"Deactivated {count} product(s).",
        )

    def save_model(self, request, obj, form, change):
        if change:
            changed = [name for name in form.changed_data if name in PRODUCT_FORM_FIELDS]
            if changed:
                services.product_update(product_id=obj.pk, **_service_fields(form, changed))
            return
        created = services.product_create(
            **_service_fields(form, PRODUCT_FORM_FIELDS), actor_id=request.user.pk
        )
        obj.pk, obj.created_at, obj.updated_at = created.pk, created.created_at, created.updated_at
        obj._state.adding = False

    def save_formset(self, request, form, formset, change):
        if formset.model is not StockAdjustment:
            return super().save_formset(request, form, formset, change)
        # What the admin's change message reports.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for adjustment_form in formset.extra_forms:
            if not adjustment_form.has_changed():
                continue
            # A refused adjustment (e.g. below what is reserved) rolls the whole save
            # back and shows the form again with the service's reason.
            adjustment = services.stock_adjust(
                product_id=form.instance.pk,
                delta=adjustment_form.cleaned_data["delta"],
                reason=adjustment_form.cleaned_data["reason"],
                actor_id=request.user.pk,
            )
            formset.new_objects.append(adjustment)
        return None


class CategoryForm(forms.ModelForm):
    class Meta:
        model = Category
        fields = ["name", "slug", "parent", "position"]


@admin.register(Category)
class CategoryAdmin(ServiceFormAdmin):
    form = CategoryForm
    list_display = ["tree_name", "slug", "position"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("parent__parent__parent")

    @admin.display(description="category")
    def tree_name(self, category: Category) -> str:
        path, node = [], category
        while node is not None and len(path) < 4:
            path.append(node.name)
            node = node.parent
        return " / ".join(reversed(path)) + (" / ..." if node is not None else "")

    def get_ordering(self, request):
        return ["parent__parent__name", "parent__name", "position", "name"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # no service removes categories: move products and rename instead

    def save_model(self, request, obj, form, change):
        fields = {
            "name": form.cleaned_data["name"],
            "slug": form.cleaned_data["slug"],
            "parent_id": form.cleaned_data["parent"].pk if form.cleaned_data["parent"] else None,
            "position": form.cleaned_data["position"],
        }
        if change:
            services.category_update(category_id=obj.pk, **fields)
        else:
            obj.pk = services.category_create(**fields).pk
            obj._state.adding = False


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    """History: reservations change only through the order flow."""

    list_display = ["reference", "product", "quantity", "status", "expires_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["reference", "product__sku"]
    list_select_related = ["product"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StockAdjustment)
class StockAdjustmentAdmin(admin.ModelAdmin):
    list_display = ["product", "delta", "reason", "actor_id", "on_hand_after", "created_at"]
    search_fields = ["product__sku", "reason"]
    list_select_related = ["product"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@index_figures(order=40)
def catalog_figures() -> list[Figure]:
    """Low stock"""
    return [
        Figure(
            f"Active products with {selectors.LOW_STOCK_AVAILABLE} or fewer units available",
            str(selectors.low_stock_products().count()),
            reverse("admin:catalog_product_changelist") + "?in_stock=low&is_active__exact=1",
            permission="catalog.view_product",
        )
    ]
