/*
 * test/bench/curl_handle.c: what a libcurl easy handle costs per transfer,
 * made and freed for each one (as src/http.c does) or kept and reset.
 *
 *   cc -O2 -o /tmp/curl_handle test/bench/curl_handle.c -lcurl
 *   /tmp/curl_handle 100000
 *
 * For N transfers, three times: curl_easy_init, the options igny8_http_start
 * sets (URL, protocols, TLS checks, timeouts, callbacks, headers, a POST
 * body copied), curl_multi_add_handle, curl_multi_remove_handle and
 * curl_easy_cleanup; then the same on one handle, curl_easy_reset instead
 * of init and cleanup.  Nothing is sent: this is the handle's own cost, the
 * part a pool of handles would save.  Prints microseconds per transfer.
 * Left out, a store each: the private pointer, the error buffer, the
 * write and header data pointers and the socket callbacks; and the multi
 * handle has no socket or timer callback, so adding a handle does not
 * call back.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char body[] =
"{\"model\":\"qwen3:32b\",\"messages\":[{\"role\":\"user\",\"content\":"
"\"Write about clouds\"}],\"stream\":false,\"options\":{\"num_predict\":100}}";

static size_t
discard(char *p, size_t size, size_t n, void *arg)
{
	(void) p;
	(void) arg;
	return size * n;
}

static void
set_options(CURL *easy, struct curl_slist *headers)
{
	curl_easy_setopt(easy, CURLOPT_URL, "http://127.0.0.1:11434/api/chat");
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) 1048576);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, discard);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "igny8_ai/1.0");
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
					 (curl_off_t) (sizeof(body) - 1));
	curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, body);
}

static struct curl_slist *
make_headers(void)
{
	struct curl_slist *h = curl_slist_append(NULL, "Expect:");

	return curl_slist_append(h, "Content-Type: application/json");
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int
main(int argc, char **argv)
{
	int			n = argc > 1 ? atoi(argv[1]) : 100000;
	CURLM	   *multi;

	if (n <= 0 || curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		return 2;
	multi = curl_multi_init();
	for (int round = 0; round < 3; round++)
	{
		double		t0 = now_us(),
					t1,
					t2;
		CURL	   *kept;

		for (int i = 0; i < n; i++)
		{
			struct curl_slist *h = make_headers();
			CURL	   *easy = curl_easy_init();

			set_options(easy, h);
			curl_multi_add_handle(multi, easy);
			curl_multi_remove_handle(multi, easy);
			curl_easy_cleanup(easy);
			curl_slist_free_all(h);
		}
		t1 = now_us();
		kept = curl_easy_init();
		for (int i = 0; i < n; i++)
		{
			struct curl_slist *h = make_headers();

			curl_easy_reset(kept);
			set_options(kept, h);
			curl_multi_add_handle(multi, kept);
			curl_multi_remove_handle(multi, kept);
			curl_slist_free_all(h);
		}
		t2 = now_us();
		curl_easy_cleanup(kept);
		printf("a handle per transfer %.2f us, one handle reset %.2f us\n",
			   (t1 - t0) / n, (t2 - t1) / n);
	}
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return 0;
}
