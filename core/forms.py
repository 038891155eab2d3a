"""Forms for the pages."""

from django import forms

from core.models import slug_validator


class RoomForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[slug_validator],
        help_text="Optional; made from the name when left empty.",
    )
    is_private = forms.BooleanField(required=False, label="Private (members only)")
