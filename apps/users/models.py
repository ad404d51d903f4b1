from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


def normalize_email(email: str) -> str:
    # Emails are compared case-insensitively, so they are stored in one case.
    return email.strip().lower()


class UserManager(BaseUserManager):
    def get_by_natural_key(self, username):
        return self.get(email=normalize_email(username))

    def create_user(self, email: str, password: str | None = None, **fields):
        user = self.model(email=normalize_email(email), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields):
        fields.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """An account; the email is the login."""

    class Language(models.TextChoices):
        ENGLISH = "en", "English"
        GERMAN = "de", "German"
        FRENCH = "fr", "French"
        SPANISH = "es", "Spanish"

    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    preferred_language = models.CharField(
        max_length=8, choices=Language.choices, default=Language.ENGLISH
    )
    preferred_currency = models.CharField(max_length=3, default=settings.DEFAULT_CURRENCY)
    marketing_opt_in = models.BooleanField(default=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["full_name"]

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="users_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    @classmethod
    def from_token(cls, user_id: int) -> "User":
        """The account an access token names, with nothing read yet: its id is known, the
        first other field used loads them all (one query)."""
        return cls.from_db(None, ["id"], [user_id])

    def refresh_from_db(self, using=None, fields=None, from_queryset=None):
        deferred = self.get_deferred_fields()
        if fields is None or not deferred or not set(fields) & deferred:
            return super().refresh_from_db(using, fields, from_queryset)
        # A deferred field is being read: load every deferred one at once (from the
        # primary, like every undeclared read, so a brand-new account is there).
        return super().refresh_from_db(using, set(fields) | deferred, from_queryset)

    def clean(self) -> None:
        super().clean()
        self.email = normalize_email(self.email)


class Address(models.Model):
    """A postal address of a user; at most one is the default shipping address."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="addresses")
    label = models.CharField(max_length=50, blank=True)
    full_name = models.CharField(max_length=200)
    line1 = models.CharField(max_length=200)
    line2 = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100)
    region = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2 code")
    phone = models.CharField(max_length=32, blank=True)
    is_default_shipping = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "addresses"
        constraints = [
            models.UniqueConstraint(
                fields=["user"],
                condition=models.Q(is_default_shipping=True),
                name="users_address_one_default_shipping",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.full_name}, {self.line1}, {self.city} ({self.country})"
