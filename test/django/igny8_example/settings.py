"""
Settings of the example application: one PostgreSQL database with the
igny8_ai extension, the connection from the environment (IGNY8_PGHOST,
IGNY8_PGPORT, IGNY8_PGDATABASE, IGNY8_PGUSER; a socket directory as host
works), media files under IGNY8_MEDIA_ROOT.
"""
import os

SECRET_KEY = "igny8-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = []

INSTALLED_APPS = [
    "content",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("IGNY8_PGHOST", ""),
        "PORT": os.environ.get("IGNY8_PGPORT", ""),
        "NAME": os.environ.get("IGNY8_PGDATABASE", "app"),
        "USER": os.environ.get("IGNY8_PGUSER", "postgres"),
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MEDIA_ROOT = os.environ.get("IGNY8_MEDIA_ROOT", "")
