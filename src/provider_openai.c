/*-------------------------------------------------------------------------
 *
 * provider_openai.c
 *	  The OpenAI chat completions protocol: POST /v1/chat/completions.
 *
 * Spoken by OpenAI itself and by the compatible servers (Ollama's /v1,
 * vLLM, LiteLLM, ...), so the key is optional.  The output limit goes in
 * "max_tokens", which all of them accept; a deployment whose model wants
 * "max_completion_tokens" (OpenAI reasoning models) says so with the
 * setting "max_tokens_field".  The setting "extra_body", an object, is
 * merged into the body: the request's own fields win over it, and its
 * "stream" is dropped since only one JSON answer can be read.  See
 * protocols.md sections 1.7 and 3.
 *
 * The health probe is GET /v1/models, which every one of these servers
 * answers with the ids of its models: OpenAI all it offers, vLLM,
 * LiteLLM and Ollama's /v1 those they serve.  The configured models are
 * checked against those ids.
 *
 * Images are POST /v1/images/generations (protocols.md 3.2), one image a
 * call, returned as base64 in the JSON answer.  What a model accepts
 * differs (sizes, quality names, style, response_format), so the request
 * is fitted to the model's family: dall-e-2, dall-e-3 or gpt-image-*; a
 * model of none of them (another server's) gets only what it asked for.
 *
 * src/provider_openai.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include "provider.h"

#define OPENAI_NAME "OpenAI-compatible API"

/*
 * The end of every request body: the "extra_body" setting merged in
 * without overwriting what the request set, never "stream" (the answer is
 * read whole), then the text.
 */
static void
openai_finish_body(cJSON *body, const cJSON *settings, Igny8HttpRequest *out)
{
	igny8_json_merge(body, igny8_json_member(settings, "extra_body"), false);
	while (cJSON_GetObjectItemCaseSensitive(body, "stream") != NULL)
		cJSON_DeleteItemFromObjectCaseSensitive(body, "stream");
	out->body = igny8_json_print(body);
	cJSON_Delete(body);
}

/* Build POST /v1/chat/completions. */
static void
openai_build_chat(const Igny8TextRequest *req, const char *api_key,
				  Igny8HttpRequest *out)
{
	cJSON	   *body;
	cJSON	   *messages;
	const char *max_field;
	int			i;

	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup("/v1/chat/completions");
	igny8_add_header(out, "Content-Type: application/json");
	if (api_key != NULL)
		igny8_add_header(out, "Authorization: Bearer %s", api_key);

	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "model", req->model ? req->model : "");
	messages = cJSON_AddArrayToObject(body, "messages");
	for (i = 0; i < req->nmessages; i++)
	{
		const Igny8Message *msg = &req->messages[i];
		cJSON	   *m = cJSON_CreateObject();

		cJSON_AddStringToObject(m, "role", msg->role ? msg->role : "user");
		cJSON_AddStringToObject(m, "content",
								msg->content ? msg->content : "");
		cJSON_AddItemToArray(messages, m);
	}

	max_field = igny8_json_string(req->settings, "max_tokens_field");
	if (max_field == NULL || strcmp(max_field, "max_completion_tokens") != 0)
		max_field = "max_tokens";
	cJSON_AddNumberToObject(body, max_field, req->max_tokens);
	if (req->has_temperature)
		cJSON_AddNumberToObject(body, "temperature", req->temperature);

	openai_finish_body(body, req->settings, out);
}

/* Read a 2xx answer (protocols.md 3.1); false and *err if unusable. */
static bool
openai_parse_success(const cJSON *json, long status,
					 Igny8TextResult *result, Igny8ProviderError *err)
{
	const cJSON *choices;
	const cJSON *choice;
	const cJSON *message;
	const cJSON *content;
	const cJSON *usage;
	const char *reasoning;
	const char *str;
	char	   *inline_thinking;

	if (json == NULL)
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed JSON response from " OPENAI_NAME " (HTTP %ld)",
						status);
		return false;
	}
	if (!cJSON_IsObject(json))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": not a JSON object");
		return false;
	}

	choices = igny8_json_member(json, "choices");
	if (!cJSON_IsArray(choices) || cJSON_GetArraySize(choices) < 1)
	{
		/* some proxies answer 200 with an error body */
		str = igny8_error_message(json);
		if (str != NULL)
			igny8_set_error(err, IGNY8_ERR_RETRY, -1,
							"malformed response from " OPENAI_NAME ": error \"%s\"",
							str);
		else
			igny8_set_error(err, IGNY8_ERR_RETRY, -1,
							"malformed response from " OPENAI_NAME ": no choices");
		return false;
	}
	choice = cJSON_GetArrayItem(choices, 0);
	message = igny8_json_member(choice, "message");
	if (!cJSON_IsObject(message))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": no choices[0].message");
		return false;
	}

	/* content is null for a refusal (below) or tool calls: an empty answer */
	content = igny8_json_member(message, "content");
	if (content != NULL && !cJSON_IsNull(content) && !cJSON_IsString(content))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed response from " OPENAI_NAME ": message.content is not a string");
		return false;
	}

	/*
	 * Ollama's /v1 puts the trace in "reasoning", vLLM and DeepSeek in
	 * "reasoning_content"; a server without a reasoning parser leaves it
	 * inline in <think> tags.
	 */
	result->content = igny8_take_answer(content, &inline_thinking);
	reasoning = igny8_json_string(message, "reasoning");
	if (reasoning == NULL || reasoning[0] == '\0')
		reasoning = igny8_json_string(message, "reasoning_content");
	if (reasoning != NULL && reasoning[0] != '\0')
	{
		result->thinking = pstrdup(reasoning);
		if (inline_thinking != NULL)
			pfree(inline_thinking);
	}
	else
		result->thinking = inline_thinking;

	str = igny8_json_string(json, "model");
	result->model = str ? pstrdup(str) : NULL;
	str = igny8_json_string(choice, "finish_reason");
	result->finish_reason = str ? pstrdup(str) : NULL;

	/*
	 * A refusal (structured outputs, protocols.md 3.1): content is null and
	 * message.refusal says why.  That text is the answer, with the
	 * finish_reason "refusal" unless the server gave a reason other than
	 * "stop"; the caller can tell it from an answer.
	 */
	str = igny8_json_string(message, "refusal");
	if (!cJSON_IsString(content) && str != NULL && str[0] != '\0')
	{
		pfree(result->content);
		result->content = pstrdup(str);
		if (result->finish_reason == NULL ||
			strcmp(result->finish_reason, "stop") == 0)
		{
			if (result->finish_reason)
				pfree(result->finish_reason);
			result->finish_reason = pstrdup("refusal");
		}
	}
	usage = igny8_json_member(json, "usage");
	result->input_tokens = igny8_json_count(usage, "prompt_tokens");
	result->cached_input_tokens =
		igny8_json_count(igny8_json_member(usage, "prompt_tokens_details"),
						 "cached_tokens");
	result->output_tokens = igny8_json_count(usage, "completion_tokens");
	return true;
}

/*
 * Classify a non-2xx answer (protocols.md 3.3).  The generic rules
 * (x-should-retry included) cover the statuses; a 429 that is about
 * billing (insufficient_quota) or about a request larger than the whole
 * limit ("Request too large") falls back at once, whatever the headers
 * say, since waiting cannot fix it; so does a spending limit reached
 * (billing_hard_limit_reached, a 400) or an account without billing
 * (billing_not_active).  So does a 400 that says the prompt
 * is longer than the deployment's context (context_length_exceeded,
 * vLLM's and llama.cpp's wordings): another deployment may have a larger
 * window (protocols.md 5).
 */
static void
openai_parse_error(const Igny8HttpResponse *resp, const cJSON *json,
				   Igny8ProviderError *err)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *message = igny8_error_message(json);
	const char *type = igny8_json_string(error, "type");
	const char *code = igny8_json_string(error, "code");
	Igny8ErrorClass cls;

	cls = igny8_classify_status(resp->status, resp->should_retry);
	if (resp->status == 429)
	{
		if ((type != NULL && strcmp(type, "insufficient_quota") == 0) ||
			(code != NULL && strcmp(code, "insufficient_quota") == 0) ||
			igny8_str_contains(message, "Request too large"))
			cls = IGNY8_ERR_FALLBACK;
	}
	if (resp->status == 400 && igny8_context_exceeded(json))
		cls = IGNY8_ERR_FALLBACK;
	/* the organisation's spending limit: a 400 that is about billing */
	if (code != NULL && (strcmp(code, "billing_hard_limit_reached") == 0 ||
						 strcmp(code, "billing_not_active") == 0))
		cls = IGNY8_ERR_FALLBACK;
	igny8_set_http_error(err, cls, resp, OPENAI_NAME, message);
}

/* Read the answer to openai_build_chat's call, whatever its status. */
static bool
openai_parse_chat(const Igny8HttpResponse *resp, Igny8TextResult *result,
				  Igny8ProviderError *err)
{
	return igny8_parse_answer(resp, OPENAI_NAME, result, err,
							  openai_parse_success, openai_parse_error);
}

const Igny8TextProtocol igny8_openai_protocol = {
	.name = "openai",
	.needs_key = false,
	.build_chat = openai_build_chat,
	.parse_chat = openai_parse_chat
};

/* Build GET /v1/models, with the key as a bearer header when given. */
static void
openai_build_probe(const char *api_key, const cJSON *settings,
				   Igny8HttpRequest *out)
{
	igny8_build_get(out, "/v1/models", api_key);
}

/*
 * Read the answer to openai_build_probe's call.  A 2xx must be an object
 * with a "data" array of {"id": ...} entries.
 */
static void
openai_parse_probe(const Igny8HttpResponse *resp, const char *const *models,
				   int nmodels, Igny8ProbeResult *out)
{
	static const char *const name_keys[] = {"id"};

	igny8_probe_model_list(resp, models, nmodels, OPENAI_NAME, "data",
						   name_keys, lengthof(name_keys), out);
}

const Igny8ProbeProtocol igny8_openai_probe = {
	.name = "openai",
	.build_probe = openai_build_probe,
	.parse_probe = openai_parse_probe
};

/* ----- images ----- */

/* The models whose image parameters differ (protocols.md 3.2). */
typedef enum OpenAIImageFamily
{
	FAMILY_OTHER,				/* unknown: send only what was asked */
	FAMILY_DALLE2,
	FAMILY_DALLE3,
	FAMILY_GPT_IMAGE
} OpenAIImageFamily;

typedef struct ImageSize
{
	int			width;
	int			height;
} ImageSize;

/* The sizes of each family; the first is the default. */
static const ImageSize dalle2_sizes[] = {{1024, 1024}, {512, 512}, {256, 256}};
static const ImageSize dalle3_sizes[] = {{1024, 1024}, {1792, 1024},
{1024, 1792}};
static const ImageSize gpt_image_sizes[] = {{1024, 1024}, {1536, 1024},
{1024, 1536}};

static OpenAIImageFamily
openai_image_family(const char *model)
{
	if (model == NULL)
		return FAMILY_OTHER;
	if (strcmp(model, "dall-e-2") == 0)
		return FAMILY_DALLE2;
	if (strcmp(model, "dall-e-3") == 0)
		return FAMILY_DALLE3;
	if (strncmp(model, "gpt-image-", 10) == 0)
		return FAMILY_GPT_IMAGE;
	return FAMILY_OTHER;
}

/* How far apart two ratios are: their quotient, the larger way up. */
static double
ratio_distance(double a, double b)
{
	return a > b ? a / b : b / a;
}

/*
 * Map a size to the one of the model's sizes nearest in aspect ratio,
 * then in area, each compared as a factor (twice as wide is as far as
 * twice as tall).  A size that is not positive gets the model's default;
 * an unknown model makes the size asked.
 */
void
igny8_openai_image_size(const char *model, int width, int height,
						int *out_width, int *out_height)
{
	const ImageSize *sizes;
	int			nsizes;
	int			best = 0;
	double		best_aspect = 0;
	double		best_area = 0;
	int			i;

	switch (openai_image_family(model))
	{
		case FAMILY_DALLE2:
			sizes = dalle2_sizes;
			nsizes = lengthof(dalle2_sizes);
			break;
		case FAMILY_DALLE3:
			sizes = dalle3_sizes;
			nsizes = lengthof(dalle3_sizes);
			break;
		case FAMILY_GPT_IMAGE:
			sizes = gpt_image_sizes;
			nsizes = lengthof(gpt_image_sizes);
			break;
		default:
			*out_width = width;
			*out_height = height;
			return;
	}

	if (width > 0 && height > 0)
	{
		double		aspect = (double) width / height;
		double		area = (double) width * height;

		for (i = 0; i < nsizes; i++)
		{
			double		d_aspect;
			double		d_area;

			d_aspect = ratio_distance((double) sizes[i].width /
									  sizes[i].height, aspect);
			d_area = ratio_distance((double) sizes[i].width *
									sizes[i].height, area);
			if (i == 0 || d_aspect < best_aspect * (1 - 1e-9) ||
				(d_aspect <= best_aspect * (1 + 1e-9) && d_area < best_area))
			{
				best = i;
				best_aspect = d_aspect;
				best_area = d_area;
			}
		}
	}
	*out_width = sizes[best].width;
	*out_height = sizes[best].height;
}

/*
 * The quality to send, or NULL for none: dall-e-3 knows standard|hd,
 * GPT image models low|medium|high|auto (the dall-e names mapped to
 * them), dall-e-2 and unknown models get none.
 */
static const char *
openai_image_quality(OpenAIImageFamily family, const char *quality)
{
	static const char *const gpt_qualities[] = {"low", "medium", "high",
	"auto"};
	int			i;

	if (quality == NULL || quality[0] == '\0')
		return NULL;
	switch (family)
	{
		case FAMILY_DALLE3:
			return (pg_strcasecmp(quality, "hd") == 0 ||
					pg_strcasecmp(quality, "high") == 0) ? "hd" : "standard";
		case FAMILY_GPT_IMAGE:
			if (pg_strcasecmp(quality, "standard") == 0)
				return "medium";
			if (pg_strcasecmp(quality, "hd") == 0)
				return "high";
			for (i = 0; i < (int) lengthof(gpt_qualities); i++)
			{
				if (pg_strcasecmp(quality, gpt_qualities[i]) == 0)
					return gpt_qualities[i];
			}
			return NULL;
		default:
			return NULL;
	}
}

/*
 * The quality an image is billed by, for the quality asked: for a known
 * image model the one sent (NULL when none is, as for dall-e-2), for
 * another model the one asked.  price.c prices images with it.
 */
const char *
igny8_openai_image_billed_quality(const char *model, const char *quality)
{
	OpenAIImageFamily family = openai_image_family(model);

	if (family == FAMILY_OTHER)
		return quality;
	return openai_image_quality(family, quality);
}

/*
 * Build POST /v1/images/generations for one image.  The setting
 * "extra_body", an object, is merged in as for chat (the request's own
 * fields win, no "stream"): e.g. {"response_format": "b64_json"} for a
 * compatible server of an unknown model, or a gpt-image "background".
 */
void
igny8_openai_build_image(const Igny8ImageRequest *req, const char *api_key,
						 Igny8HttpRequest *out)
{
	OpenAIImageFamily family = openai_image_family(req->model);
	cJSON	   *body;
	const char *quality;
	int			width;
	int			height;

	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup("/v1/images/generations");
	igny8_add_header(out, "Content-Type: application/json");
	if (api_key != NULL)
		igny8_add_header(out, "Authorization: Bearer %s", api_key);

	body = cJSON_CreateObject();
	if (req->model != NULL)
		cJSON_AddStringToObject(body, "model", req->model);
	cJSON_AddStringToObject(body, "prompt", req->prompt ? req->prompt : "");
	cJSON_AddNumberToObject(body, "n", 1);
	igny8_openai_image_size(req->model, req->width, req->height, &width,
							&height);
	if (width > 0 && height > 0)
	{
		char	   *size = psprintf("%dx%d", width, height);

		cJSON_AddStringToObject(body, "size", size);
		pfree(size);
	}
	quality = openai_image_quality(family, req->quality);
	if (quality != NULL)
		cJSON_AddStringToObject(body, "quality", quality);
	if (family == FAMILY_DALLE3 && req->style != NULL)
	{
		if (pg_strcasecmp(req->style, "vivid") == 0)
			cJSON_AddStringToObject(body, "style", "vivid");
		else if (pg_strcasecmp(req->style, "natural") == 0)
			cJSON_AddStringToObject(body, "style", "natural");
	}
	/* dall-e answers with a URL unless told; GPT image models refuse it */
	if (req->model != NULL && strncmp(req->model, "dall-e-", 7) == 0)
		cJSON_AddStringToObject(body, "response_format", "b64_json");

	openai_finish_body(body, req->settings, out);
}

/* Fill *err for a 2xx answer that cannot be used: worth one more try. */
static void
openai_image_malformed(Igny8ProviderError *err, const char *what)
{
	igny8_set_error(err, IGNY8_ERR_RETRY, -1,
					"malformed response from " OPENAI_NAME ": %s", what);
	err->retry_once = true;
}

/* Read a 2xx answer (protocols.md 3.2); false and *err if unusable. */
static bool
openai_image_success(const Igny8HttpResponse *resp, const cJSON *json,
					 size_t max_image, Igny8ImageResult *result,
					 Igny8ProviderError *err)
{
	const cJSON *data;
	const cJSON *item;
	const cJSON *b64;
	const char *str;
	const char *format;
	size_t		size;
	char	   *image;
	size_t		len;
	char	   *problem;

	if (json == NULL)
	{
		openai_image_malformed(err, "not JSON");
		return false;
	}
	if (igny8_json_has_nul(resp->body, resp->body_len))
	{
		openai_image_malformed(err, "a string contains a NUL character");
		return false;
	}
	data = igny8_json_member(json, "data");
	item = cJSON_GetArrayItem(cJSON_IsArray(data) ? data : NULL, 0);
	if (!cJSON_IsObject(item))
	{
		/* some proxies answer 200 with an error body */
		str = igny8_error_message(json);
		if (str != NULL)
		{
			char	   *what = psprintf("error \"%s\"", str);

			openai_image_malformed(err, what);
			pfree(what);
		}
		else
			openai_image_malformed(err, "no data[0]");
		return false;
	}
	b64 = igny8_json_member(item, "b64_json");
	if (!cJSON_IsString(b64) || b64->valuestring == NULL)
	{
		/* asking again gets a URL again: the deployment is set up wrong */
		if (igny8_json_string(item, "url") != NULL)
			igny8_set_error(err, IGNY8_ERR_FALLBACK, -1,
							OPENAI_NAME " answered with an image URL, not b64_json (set \"response_format\" in extra_body)");
		else
			openai_image_malformed(err, "no data[0].b64_json");
		return false;
	}

	len = strlen(b64->valuestring);
	size = igny8_base64_decoded_len(b64->valuestring, len);
	if (size != SIZE_MAX && size > max_image)
	{
		igny8_set_error(err, IGNY8_ERR_FALLBACK, -1,
						"image larger than %zu bytes", max_image);
		return false;
	}
	if (!igny8_base64_decode(b64->valuestring, len, max_image, &image,
							 &size))
	{
		openai_image_malformed(err, "data[0].b64_json is not base64");
		return false;
	}
	if (!igny8_png_check(image, size, &result->width, &result->height,
						 &problem))
	{
		/* a GPT image model told to write JPEG or WebP does so every time */
		format = igny8_json_string(json, "output_format");
		if (format != NULL && pg_strcasecmp(format, "png") != 0)
			igny8_set_error(err, IGNY8_ERR_FALLBACK, -1,
							"the image is %s, not PNG (output_format)",
							format);
		else
		{
			igny8_set_error(err, IGNY8_ERR_RETRY, -1,
							"malformed image from " OPENAI_NAME ": %s",
							problem);
			err->retry_once = true;
		}
		pfree(problem);
		pfree(image);
		return false;
	}

	result->data = image;
	result->len = size;
	result->mime_type = "image/png";
	str = igny8_json_string(item, "revised_prompt");
	if (str != NULL && str[0] != '\0' && igny8_utf8_valid(str, strlen(str)))
		result->revised_prompt = pstrdup(str);
	return true;
}

/*
 * Classify a non-2xx answer: as for chat (openai_parse_error), and a
 * safety refusal is the caller's whatever the headers say, since the
 * same prompt will be refused again anywhere.
 */
static void
openai_image_error(const Igny8HttpResponse *resp, const cJSON *json,
				   Igny8ProviderError *err)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *type = igny8_json_string(error, "type");
	const char *code = igny8_json_string(error, "code");

	openai_parse_error(resp, json, err);
	if (resp->status == 400 &&
		((code != NULL && (strcmp(code, "content_policy_violation") == 0 ||
						   strcmp(code, "moderation_blocked") == 0)) ||
		 (type != NULL && strcmp(type, "image_generation_user_error") == 0)))
		err->cls = IGNY8_ERR_CALLER;
}

/* Read the answer to igny8_openai_build_image's call (see provider.h). */
bool
igny8_openai_parse_image(const Igny8HttpResponse *resp, size_t max_image,
						 Igny8ImageResult *result, Igny8ProviderError *err)
{
	cJSON	   *json;
	bool		ok;

	memset(result, 0, sizeof(*result));
	igny8_init_error(err);
	json = igny8_json_parse_body(resp);
	if (resp->status >= 200 && resp->status < 300)
		ok = openai_image_success(resp, json, max_image, result, err);
	else
	{
		openai_image_error(resp, json, err);
		ok = false;
	}
	cJSON_Delete(json);
	if (!ok)
		memset(result, 0, sizeof(*result));
	return ok;
}
