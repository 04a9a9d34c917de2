#!/usr/bin/python3
"""
The Django application's view of igny8_ai: raw SQL through
django.db.connection, as the content platform calls it.

Runs against a database that already has the extension, with its providers
pointed at the simulator (test/suites/django_client sets that up); the
connection comes from the environment: IGNY8_PGHOST, IGNY8_PGPORT,
IGNY8_PGDATABASE (see igny8_example/settings.py).
"""
import os
import sys
import unittest

# the example application's settings (igny8_example/settings.py) and its
# service module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "igny8_example.settings")
import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.db.utils import DataError, InternalError, OperationalError, ProgrammingError  # noqa: E402

from content.services import AIEngineRouter, store_image  # noqa: E402


def fetch(sql, params=()):
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def execute(sql, params=()):
    with connection.cursor() as cur:
        cur.execute(sql, params)


def generate(prompt, model="gpt-4", **kwargs):
    return AIEngineRouter().generate_text(prompt, model, **kwargs)


class DjangoClientTest(unittest.TestCase):

    def test_generate_text(self):
        text = generate("Write a 100-word article about clouds", "gpt-4")
        self.assertEqual(text, "ollama qwen3:32b: Clouds are visible masses of water droplets.")

    def test_image_saved_as_the_application_would(self):
        # generate_product_images: make the image, keep its bytes in a model's
        # file storage (here a temporary directory), and its facts
        import tempfile
        from django.core.files.storage import FileSystemStorage

        rows = fetch("SELECT image, mime_type, width, height, seed, provider, model"
                     " FROM igny8_generate_image(%s, %s, %s, %s::jsonb)",
                     ["A red bicycle, product photo", "dall-e-3", "768x512",
                      '{"seed": 7, "account_id": 42}'])
        image, mime, width, height, seed, provider, model = rows[0]
        self.assertIsInstance(image, memoryview)
        data = bytes(image)
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(int.from_bytes(data[16:20], "big"), 768)
        self.assertEqual(int.from_bytes(data[20:24], "big"), 512)
        self.assertEqual((mime, width, height, seed), ("image/png", 768, 512, 7))
        self.assertEqual((provider, model), ("comfyui", "flux1-dev"))
        with tempfile.TemporaryDirectory() as media:
            storage = FileSystemStorage(location=media)
            name = store_image(image, "products/bicycle.png", storage)
            with storage.open(name, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(
            fetch("SELECT task_type, account_id, images, image_width, image_height"
                  " FROM ai_usage_log WHERE account_id = 42 AND task_type = 'image'"),
            [("image", 42, 1, 768, 512)])

    def test_keyword_arguments_are_passed(self):
        text = generate("Short [[sim ollama:reply=one_two_three_four]]", "gpt-4",
                        max_tokens=3, temperature=0.3, system="Be brief.")
        self.assertEqual(text, "ollama qwen3:32b: one")

    def test_chat_columns(self):
        rows = fetch(
            "SELECT content, provider, model, input_tokens, output_tokens, attempts,"
            " request_id FROM igny8_chat(%s::jsonb, %s)",
            ['[{"role": "system", "content": "You write taglines."},'
             ' {"role": "user", "content": "Clouds"}]', "gpt-3.5-turbo"])
        content, provider, model, tokens_in, tokens_out, attempts, request_id = rows[0]
        self.assertEqual(provider, "self_hosted_ai")
        self.assertEqual(model, "qwen3:14b")
        self.assertEqual((tokens_in, tokens_out, attempts), (4, 9, 1))
        self.assertEqual(
            fetch("SELECT count(*) FROM ai_usage_log WHERE request_id = %s", [request_id])[0][0], 1)

    def test_fallback_is_transparent(self):
        rows = fetch("SELECT provider, attempts FROM igny8_chat(%s::jsonb, 'gpt-4')",
                     ['[{"role": "user", "content": "Hi [[sim ollama:status=404]]"}]'])
        self.assertEqual(rows[0], ("openai", 2))

    def test_account_from_set_local_in_atomic(self):
        with transaction.atomic():
            fetch("SELECT set_config('igny8_ai.account_id', %s, true)", ["4711"])
            rows = fetch("SELECT request_id FROM igny8_chat('[{\"role\": \"user\", \"content\": \"Mine\"}]')")
        self.assertEqual(
            fetch("SELECT account_id FROM ai_usage_log WHERE request_id = %s", [rows[0][0]])[0][0], 4711)
        # outside the transaction the setting is gone
        rows = fetch("SELECT request_id FROM igny8_chat('[{\"role\": \"user\", \"content\": \"Nobody\"}]')")
        self.assertIsNone(
            fetch("SELECT account_id FROM ai_usage_log WHERE request_id = %s", [rows[0][0]])[0][0])

    def test_account_named_in_the_call_as_the_readme_does(self):
        # README, "From Django, through raw SQL": the snippet as written
        with connection.cursor() as cur:
            cur.execute("SELECT igny8_generate_text(%s, %s, account_id => %s)",
                        ["Mine, named", "gpt-4", 4712])
            self.assertTrue(cur.fetchone()[0].startswith("ollama qwen3:32b: "))
        self.assertEqual(
            fetch("SELECT count(*) FROM ai_usage_log WHERE account_id = 4712")[0][0], 1)

    def test_set_local_in_autocommit_sets_no_account(self):
        # why the README names the account in the call: outside
        # transaction.atomic() each statement is its own transaction
        execute("SET LOCAL igny8_ai.account_id = 4713")
        rows = fetch("SELECT request_id FROM igny8_chat('[{\"role\": \"user\", \"content\": \"Whose?\"}]')")
        self.assertEqual(
            fetch("SELECT count(*), count(account_id) FROM ai_usage_log WHERE request_id = %s",
                  [rows[0][0]])[0], (1, 0))

    def test_usage_survives_a_rolled_back_atomic_block(self):
        before = fetch("SELECT count(*) FROM ai_usage_log")[0][0]

        class Rollback(Exception):
            pass

        with self.assertRaises(Rollback):
            with transaction.atomic():
                generate("Rolled back by the application")
                raise Rollback()
        self.assertEqual(fetch("SELECT count(*) FROM ai_usage_log")[0][0], before + 1)

    def test_bad_input_maps_to_django_errors(self):
        with self.assertRaises(DataError) as cm:
            generate("", "gpt-4")
        self.assertIn("prompt must not be empty", str(cm.exception))
        with self.assertRaises(ProgrammingError) as cm:
            generate("Hello", "gpt-5-ultra")
        self.assertIn('model alias "gpt-5-ultra" does not exist', str(cm.exception))
        with self.assertRaises(DataError):
            fetch("SELECT igny8_chat('[]'::jsonb)")

    def test_all_providers_failing_is_an_internal_error_with_the_attempts(self):
        with self.assertRaises(InternalError) as cm:
            generate("Nothing works [[sim any:status=404]]", "gpt-3.5-turbo")
        message = str(cm.exception)
        self.assertIn('all providers failed for model alias "gpt-3.5-turbo"', message)
        self.assertEqual(cm.exception.__cause__.pgcode, "38000")
        self.assertIn('Attempt 1: provider "self_hosted_ai"', cm.exception.__cause__.diag.message_detail)

    def test_statement_timeout_cancels(self):
        with self.assertRaises(OperationalError) as cm:
            with transaction.atomic():
                execute("SET LOCAL statement_timeout = '500ms'")
                generate("Slow [[sim ollama:delay=10]]")
        self.assertEqual(cm.exception.__cause__.pgcode, "57014")
        # the connection is usable afterwards
        self.assertTrue(generate("Next").startswith("ollama"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
