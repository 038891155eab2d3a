"""Forms for the pages."""

from django import forms
from django.contrib.auth.forms import UserCreationForm

from core.models import slug_validator

# core.models.SLUG_PATTERN as an HTML pattern: browsers compile it with the
# "v" flag, where a literal hyphen in a class must be escaped.
HTML_SLUG_PATTERN = r"[a-z0-9][a-z0-9\-]{0,49}"


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


class SignupForm(UserCreationForm):
    """Django's account form, with the username field focused first."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["username"].widget.attrs["autofocus"] = True
