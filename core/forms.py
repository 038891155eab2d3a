"""Forms for the pages."""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import (
    AuthenticationForm,
    PasswordChangeForm,
    UserCreationForm,
)
from django.core.exceptions import ValidationError

from core import throttling
from core.models import slug_validator

# core.models.SLUG_PATTERN as an HTML pattern: browsers compile it with the
# "v" flag, where a literal hyphen in a class must be escaped.
HTML_SLUG_PATTERN = r"[a-z0-9][a-z0-9\-]{0,49}"

# Bases for the checker only: Django's form classes take no type arguments at
# run time, and the mixin's super() is AuthenticationForm's.
if TYPE_CHECKING:
    from django.contrib.auth.models import User as AuthUser

    _SignupFormBase = UserCreationForm[AuthUser]
    _CredentialFormBase = AuthenticationForm
else:
    _SignupFormBase = UserCreationForm
    _CredentialFormBase = object


class RoomForm(forms.Form):
    """A new room: a name, an optional slug, public or members-only."""

    name = forms.CharField(
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "e.g. Design reviews"}),
    )
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[slug_validator],
        help_text="Optional; made from the name when left empty.",
        # The browser checks the pattern too, so a typo is caught before the
        # round trip; the validator stays the rule.
        widget=forms.TextInput(
            attrs={
                "pattern": HTML_SLUG_PATTERN,
                "autocapitalize": "none",
                "spellcheck": "false",
                "placeholder": "design-reviews",
            }
        ),
    )
    is_private = forms.BooleanField(required=False, label="Private (members only)")


class SignupForm(_SignupFormBase):
    """Django's account form, with the username field focused first.

    It validates only: ``services.sign_up`` creates the account.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["username"].widget.attrs["autofocus"] = True


class CredentialLimitsMixin(_CredentialFormBase):
    """A sign-in form behind ``core.throttling``'s limits and hashing bound.

    Every submission counts against the client's address; one with a
    username and a password also counts against that username and waits
    for a password-hashing slot. A refused one gets a form error, and
    ``refusal`` tells the view (``views.credential_page``) its status.
    """

    request: Any
    cleaned_data: dict[str, Any]
    refusal: throttling.Refusal | None = None

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        checks_password = username is not None and bool(
            self.cleaned_data.get("password")
        )
        self.refusal = throttling.check_attempt(self.request)
        if self.refusal is None and checks_password:
            self.refusal = throttling.check_password_check(self.request, username)  # type: ignore[arg-type]  # checks_password: not None
            if self.refusal is None:
                try:
                    with throttling.password_hashing():
                        return super().clean()
                except throttling.Busy as exc:
                    self.refusal = exc.refusal
        if self.refusal is not None:
            raise ValidationError(self.refusal.detail, code="throttled")
        return super().clean()


class LoginForm(CredentialLimitsMixin, AuthenticationForm):
    """Django's sign-in form, throttled."""


class AdminLoginForm(CredentialLimitsMixin, AdminAuthenticationForm):
    """The admin's sign-in form (staff only), throttled."""


class PasswordForm(PasswordChangeForm):
    """The account page's password change: the current password, the new
    one twice, Django's password validators.

    It validates only: ``services.change_password`` saves, and the view
    counts the attempt and holds a hashing slot (checking the current
    password hashes it).
    """

    error_messages = {
        **PasswordChangeForm.error_messages,
        "password_incorrect": "Your current password was entered incorrectly. "
        "Please enter it again.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["old_password"].label = "Current password"
        self.fields["old_password"].widget.attrs.pop("autofocus", None)
        self.fields["new_password2"].label = "New password again"
