#!/usr/bin/python3
"""The example application's manage.py (run it with Debian's /usr/bin/python3)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "igny8_example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
