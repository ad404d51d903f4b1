from django.urls import path

from apps.users.api import views

urlpatterns = [
    path("auth/register", views.RegisterView.as_view(), name="auth-register"),
    path("auth/token", views.TokenObtainView.as_view(), name="auth-token"),
    path("auth/token/refresh", views.TokenRefreshView.as_view(), name="auth-token-refresh"),
    path("users/me", views.MeView.as_view(), name="users-me"),
    path("users/me/password", views.PasswordChangeView.as_view(), name="users-me-password"),
    path("users/me/addresses", views.AddressListView.as_view(), name="users-me-addresses"),
    path(
        "users/me/addresses/<id:address_id>",
        views.AddressDetailView.as_view(),
        name="users-me-address",
    ),
]
