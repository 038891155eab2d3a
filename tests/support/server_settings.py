"""Settings of the server processes and ``manage.py`` runs the integration
and browser tiers start: production's, with a cheap password hasher.

``backend.settings`` as it is, so the servers run with every setting the
environment gives them, except ``PASSWORD_HASHERS``: MD5 first, as the unit
tier's ``settings`` fixture has it. Production's PBKDF2 costs about 0.4 s
of CPU per hash on the 2-core CI machine, and each test user costs two (one
to create, one to sign in); no integration or browser test is about the
hash itself (the unit tier tests hasher upgrades, ``test_signals.py``).
Production's hashers stay behind it, so a stored PBKDF2 hash still verifies.

Only chosen explicitly, by ``DJANGO_SETTINGS_MODULE`` in a test process's
environment (``TEST_SERVER_SETTINGS``); ``manage.py`` and ``backend/asgi.py``
default to ``backend.settings``. Nothing outside ``tests/`` names this
module, and ``bench``, ``soak`` and ``make stack`` hash as production does.
"""

from django.conf import global_settings

from backend.settings import *  # noqa: F403

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    *global_settings.PASSWORD_HASHERS,
]

# What a test puts in an instance's or command's environment to load this.
TEST_SERVER_SETTINGS = {"DJANGO_SETTINGS_MODULE": __name__}
