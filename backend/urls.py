"""URL routes: pages, the health probes and the HTTP API."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from core import api, forms, views

# The admin signs in through the throttled form too (core.throttling); its
# login view is routed below, ahead of the admin's own URLs.
admin.site.login_form = forms.AdminLoginForm

# A URL no route matches: JSON under /api/, like every API error.
handler404 = views.not_found

urlpatterns = [
    path("", views.home, name="home"),
    path("rooms/new/", views.create_room, name="create-room"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_endpoint, name="metrics"),
    path(
        "accounts/login/",
        views.credential_page(
            auth_views.LoginView.as_view(authentication_form=forms.LoginForm)
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path("account/", views.account, name="account"),
    path("account/password/", views.change_password, name="change-password"),
    path("account/token/revoke/", views.revoke_token, name="revoke-token"),
    path("admin/login/", views.credential_page(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/auth/token/", api.TokenView.as_view(), name="api-token"),
    path("api/rooms/", api.RoomListView.as_view(), name="api-rooms"),
    path("api/rooms/<slug:slug>/", api.RoomDetailView.as_view(), name="api-room"),
    path(
        "api/rooms/<slug:slug>/members/",
        api.MemberListView.as_view(),
        name="api-members",
    ),
    path(
        "api/rooms/<slug:slug>/members/<str:username>/",
        api.MemberDetailView.as_view(),
        name="api-member",
    ),
    path("api/users/", api.UserLookupView.as_view(), name="api-users"),
    path(
        "api/rooms/<slug:slug>/messages/",
        api.MessageListView.as_view(),
        name="api-messages",
    ),
    path(
        "api/rooms/<slug:slug>/messages/<int:seq>/",
        api.MessageDetailView.as_view(),
        name="api-message",
    ),
    path(
        "api/rooms/<slug:slug>/typing/",
        api.TypingView.as_view(),
        name="api-typing",
    ),
    path(
        "api/rooms/<slug:slug>/deletions/",
        api.DeletionListView.as_view(),
        name="api-deletions",
    ),
    path("api/search/", api.SearchView.as_view(), name="api-search"),
    path("api/rooms/<slug:slug>/read/", api.ReadView.as_view(), name="api-read"),
    path("api/schema/", api.SchemaView.as_view(), name="api-schema"),
]
