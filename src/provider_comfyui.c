/*-------------------------------------------------------------------------
 *
 * provider_comfyui.c
 *	  ComfyUI: the image protocol (POST /prompt, GET /history/{id},
 *	  GET /view, the cleanup POSTs) and the health probe, GET /system_stats.
 *
 * A job is a workflow in ComfyUI's API format whose inputs the
 * deployment's bindings fill (the prompt, the size, the seed, ...).  The
 * server validates it at POST /prompt, queues it, and lists its output
 * files in its history when it has run; each file is then downloaded
 * from /view (protocols.md 2.1-2.3).  How a refusal or a failure is
 * classified follows protocols.md 2.6: what this server lacks (a model
 * file, a custom node) falls back, what is wrong with the workflow itself
 * is the caller's, and a failure while running is worth one more try.
 *
 * ComfyUI answers /system_stats with its version and, for each device,
 * the VRAM it has and has free (protocols.md 2.3), which makes a cheap
 * probe.  The node classes and model files the workflows need are checked
 * after it, one GET /object_info/{class} per node class (the end of this
 * file; the worker's probe.c drives the calls).  ComfyUI has no auth; a key, when
 * given, goes as a bearer header for a proxy in front of it.
 *
 * src/provider_comfyui.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

#include <stdarg.h>

#include "lib/stringinfo.h"
#include "provider.h"

#define COMFYUI_NAME "ComfyUI"

/* Bytes in a GiB, for the summary. */
#define GIB (1024.0 * 1024.0 * 1024.0)

/* Build GET /system_stats. */
static void
comfyui_build_probe(const char *api_key, const cJSON *settings,
					Igny8HttpRequest *out)
{
	igny8_build_get(out, "/system_stats", api_key);
}

/*
 * A string the server sent, as a JSON string fit for the detail (valid
 * UTF-8, no control characters, cut to IGNY8_ERRMSG_MAX bytes), or a JSON
 * null when it is absent.
 */
static cJSON *
comfyui_clean_string(const char *str)
{
	char	   *clean;
	cJSON	   *item;

	if (str == NULL)
		return cJSON_CreateNull();
	clean = igny8_truncate_message(str, strlen(str), IGNY8_ERRMSG_MAX);
	item = cJSON_CreateString(clean);
	pfree(clean);
	return item;
}

/*
 * Read a 2xx answer: an object with a "system" object and a "devices"
 * array.  The detail lists each device's name and VRAM (bytes) and their
 * sums; entries of "devices" that are not objects are skipped.
 */
static void
comfyui_parse_stats(const cJSON *system, const cJSON *devices,
					Igny8ProbeResult *out)
{
	cJSON	   *detail;
	cJSON	   *list;
	cJSON	   *item;
	const cJSON *device;
	const char *str;
	double		sum_total = 0;
	double		sum_free = 0;
	int			ndevices = 0;
	char	   *summary;

	detail = cJSON_CreateObject();
	str = igny8_json_string(system, "comfyui_version");
	cJSON_AddItemToObject(detail, "comfyui_version",
						  comfyui_clean_string(str));
	list = cJSON_AddArrayToObject(detail, "devices");
	cJSON_ArrayForEach(device, devices)
	{
		int64_t		vram_total;
		int64_t		vram_free;

		if (!cJSON_IsObject(device))
			continue;
		vram_total = igny8_json_count(device, "vram_total");
		vram_free = igny8_json_count(device, "vram_free");
		item = cJSON_CreateObject();
		str = igny8_json_string(device, "name");
		cJSON_AddItemToObject(item, "name", comfyui_clean_string(str));
		cJSON_AddNumberToObject(item, "vram_total", (double) vram_total);
		cJSON_AddNumberToObject(item, "vram_free", (double) vram_free);
		cJSON_AddItemToArray(list, item);
		sum_total += (double) vram_total;
		sum_free += (double) vram_free;
		ndevices++;
	}
	cJSON_AddNumberToObject(detail, "vram_free", sum_free);
	cJSON_AddNumberToObject(detail, "vram_total", sum_total);

	if (ndevices == 0)
		summary = pstrdup("running, no devices reported");
	else
		summary = psprintf("%d device%s, %.1f GiB of %.1f GiB VRAM free",
						   ndevices, ndevices == 1 ? "" : "s",
						   sum_free / GIB, sum_total / GIB);
	igny8_probe_finish(out, true, false, summary, detail);
	pfree(summary);
}

/* Read the answer to comfyui_build_probe's call, whatever its status. */
static void
comfyui_parse_probe(const Igny8HttpResponse *resp, const char *const *models,
					int nmodels, Igny8ProbeResult *out)
{
	cJSON	   *json;
	const cJSON *system;
	const cJSON *devices;

	memset(out, 0, sizeof(*out));
	json = igny8_json_parse_body(resp);
	system = igny8_json_member(json, "system");
	devices = igny8_json_member(json, "devices");
	if (resp->status < 200 || resp->status >= 300)
		igny8_probe_http_error(resp, igny8_error_message(json), out);
	else if (!cJSON_IsObject(system) || !cJSON_IsArray(devices))
		igny8_probe_malformed(resp, COMFYUI_NAME, out);
	else
		comfyui_parse_stats(system, devices, out);
	cJSON_Delete(json);
}

const Igny8ProbeProtocol igny8_comfyui_probe = {
	.name = "comfyui",
	.build_probe = comfyui_build_probe,
	.parse_probe = comfyui_parse_probe
};

/* ----- images ----- */

/* How a bound parameter's value is written into the workflow. */
typedef enum ComfyParamKind
{
	PARAM_STRING,
	PARAM_INT,					/* an integral JSON number */
	PARAM_NUMBER,
	PARAM_SEED					/* exact decimal digits, 0 .. 2^64 - 1 */
} ComfyParamKind;

typedef struct ComfyParam
{
	const char *name;
	ComfyParamKind kind;
} ComfyParam;

/* The parameters a binding may name. */
static const ComfyParam comfyui_params[] = {
	{"prompt", PARAM_STRING},
	{"negative_prompt", PARAM_STRING},
	{"width", PARAM_INT},
	{"height", PARAM_INT},
	{"steps", PARAM_INT},
	{"cfg", PARAM_NUMBER},
	{"seed", PARAM_SEED},
	{"filename_prefix", PARAM_STRING}
};

/*
 * Endings of the model files a loader's value_not_in_list names, for
 * custom loader nodes whose class name does not say "Loader".
 */
static const char *const model_suffixes[] = {
	".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft"
};

/* Format into a palloc'd error message, cut like every error message. */
static char *comfyui_message(const char *fmt,...) pg_attribute_printf(1, 2);

static char *
comfyui_message(const char *fmt,...)
{
	va_list		args;
	StringInfoData buf;
	char	   *message;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	message = igny8_truncate_message(buf.data, buf.len, IGNY8_ERRMSG_MAX);
	pfree(buf.data);
	return message;
}

/*
 * s percent-encoded for a URL path segment or query value (RFC 3986):
 * everything but the unreserved characters becomes %XX, so that a '&',
 * '/', '%' or control character in a file name stays a part of the value.
 */
static char *
comfyui_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char	   *result;
	char	   *out;

	if (s == NULL)
		s = "";
	result = palloc(strlen(s) * 3 + 1);
	out = result;
	for (p = (const unsigned char *) s; *p != '\0'; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
			*p == '_' || *p == '~')
			*out++ = (char) *p;
		else
		{
			*out++ = '%';
			*out++ = hex[*p >> 4];
			*out++ = hex[*p & 15];
		}
	}
	*out = '\0';
	return result;
}

/* Start a POST of a JSON body (printed from body, which is freed). */
static void
comfyui_build_post(Igny8HttpRequest *out, const char *path, cJSON *body,
				   const char *api_key)
{
	memset(out, 0, sizeof(*out));
	out->method = "POST";
	out->path = pstrdup(path);
	igny8_add_header(out, "Content-Type: application/json");
	if (api_key != NULL)
		igny8_add_header(out, "Authorization: Bearer %s", api_key);
	out->body = igny8_json_print(body);
	cJSON_Delete(body);
}

/* Is a workflow input value a link to another node's output? */
static bool
comfyui_is_link(const cJSON *value)
{
	return cJSON_IsArray(value) && cJSON_GetArraySize(value) == 2 &&
		cJSON_IsString(cJSON_GetArrayItem(value, 0)) &&
		cJSON_IsNumber(cJSON_GetArrayItem(value, 1));
}

/*
 * The value the request gives a parameter, as a new cJSON item, or NULL
 * when the request leaves it to the defaults (a NULL string, a size or
 * steps of 0, no cfg).
 */
static cJSON *
comfyui_request_value(const Igny8ImageRequest *req, const ComfyParam *param)
{
	const char *name = param->name;

	if (strcmp(name, "prompt") == 0)
		return req->prompt ? cJSON_CreateString(req->prompt) : NULL;
	if (strcmp(name, "negative_prompt") == 0)
		return req->negative_prompt ?
			cJSON_CreateString(req->negative_prompt) : NULL;
	if (strcmp(name, "width") == 0)
		return req->width > 0 ? cJSON_CreateNumber(req->width) : NULL;
	if (strcmp(name, "height") == 0)
		return req->height > 0 ? cJSON_CreateNumber(req->height) : NULL;
	if (strcmp(name, "steps") == 0)
		return req->steps > 0 ? cJSON_CreateNumber(req->steps) : NULL;
	if (strcmp(name, "cfg") == 0)
		return req->has_cfg ? cJSON_CreateNumber(req->cfg) : NULL;
	if (strcmp(name, "seed") == 0)
	{
		/*
		 * A double holds integers exactly only up to 2^53, and ComfyUI
		 * takes seeds up to 2^64 - 1: write the digits themselves.
		 */
		char	   *digits = psprintf(UINT64_FORMAT, (uint64) req->seed);
		cJSON	   *item = cJSON_CreateRaw(digits);

		pfree(digits);
		return item;
	}
	if (strcmp(name, "filename_prefix") == 0)
		return req->filename_prefix ?
			cJSON_CreateString(req->filename_prefix) : NULL;
	return NULL;
}

/*
 * The value of defaults[param], as a new cJSON item, or NULL when there
 * is none.  A default of the wrong type is an error (*error set).
 */
static cJSON *
comfyui_default_value(const cJSON *defaults, const ComfyParam *param,
					  char **error)
{
	const cJSON *item = igny8_json_member(defaults, param->name);
	bool		ok;

	if (item == NULL || cJSON_IsNull(item) || param->kind == PARAM_SEED)
		return NULL;
	switch (param->kind)
	{
		case PARAM_STRING:
			ok = cJSON_IsString(item);
			break;
		case PARAM_INT:
			ok = cJSON_IsNumber(item) && item->valuedouble >= 0 &&
				item->valuedouble <= PG_INT32_MAX &&
				item->valuedouble == (double) (int) item->valuedouble;
			break;
		default:
			ok = cJSON_IsNumber(item);
			break;
	}
	if (!ok)
	{
		*error = comfyui_message("the default of \"%s\" is not %s",
								 param->name,
								 param->kind == PARAM_STRING ? "a string" :
								 param->kind == PARAM_INT ?
								 "a non-negative integer" : "a number");
		return NULL;
	}
	return cJSON_Duplicate(item, true);
}

/*
 * Set one binding, {"param": ["node id", "input name"]}, in the graph.
 * False with *error set when the binding is not of that shape, names an
 * unknown parameter, or points at a node or an input the graph lacks (or
 * at an input that is a link: overwriting it would cut the graph).
 */
static bool
comfyui_bind(const Igny8ImageRequest *req, cJSON *graph,
			 const cJSON *binding, char **error)
{
	const char *name = binding->string;
	const ComfyParam *param = NULL;
	const char *node_id;
	const char *input_name;
	const char *class_type;
	cJSON	   *node;
	cJSON	   *inputs;
	cJSON	   *value;
	int			i;

	for (i = 0; i < (int) lengthof(comfyui_params); i++)
	{
		if (strcmp(name, comfyui_params[i].name) == 0)
			param = &comfyui_params[i];
	}
	if (param == NULL)
	{
		*error = comfyui_message("unknown binding \"%s\"", name);
		return false;
	}
	if (!cJSON_IsArray(binding) || cJSON_GetArraySize(binding) != 2 ||
		!cJSON_IsString(cJSON_GetArrayItem(binding, 0)) ||
		!cJSON_IsString(cJSON_GetArrayItem(binding, 1)))
	{
		*error = comfyui_message("binding \"%s\" is not [\"node id\", \"input name\"]",
								 name);
		return false;
	}
	node_id = cJSON_GetArrayItem(binding, 0)->valuestring;
	input_name = cJSON_GetArrayItem(binding, 1)->valuestring;

	node = igny8_json_member(graph, node_id);
	if (!cJSON_IsObject(node))
	{
		*error = comfyui_message("binding \"%s\": the workflow has no node %s",
								 name, node_id);
		return false;
	}
	class_type = igny8_json_string(node, "class_type");
	inputs = igny8_json_member(node, "inputs");
	if (igny8_json_member(inputs, input_name) == NULL)
	{
		*error = comfyui_message("binding \"%s\": node %s (%s) has no input \"%s\"",
								 name, node_id,
								 class_type ? class_type : "no class_type",
								 input_name);
		return false;
	}
	if (comfyui_is_link(igny8_json_member(inputs, input_name)))
	{
		*error = comfyui_message("binding \"%s\": input \"%s\" of node %s (%s) is a link, not a value",
								 name, input_name, node_id,
								 class_type ? class_type : "no class_type");
		return false;
	}

	value = comfyui_request_value(req, param);
	if (value == NULL)
	{
		value = comfyui_default_value(req->defaults, param, error);
		if (*error != NULL)
			return false;
	}
	/* a bound negative prompt is cleared, not left to the workflow's text */
	if (value == NULL && strcmp(param->name, "negative_prompt") == 0)
		value = cJSON_CreateString("");
	/* in place, so that the inputs keep the order the workflow gave them */
	if (value != NULL &&
		!cJSON_ReplaceItemInObjectCaseSensitive(inputs, input_name, value))
		cJSON_Delete(value);
	return true;
}

/*
 * Build POST /prompt from a copy of the workflow with the bound inputs
 * set (see provider.h).  On failure *error is set and out is left empty.
 */
bool
igny8_comfyui_build_submit(const Igny8ImageRequest *req, const char *api_key,
						   Igny8HttpRequest *out, char **error)
{
	cJSON	   *graph;
	cJSON	   *body;
	const cJSON *binding;

	memset(out, 0, sizeof(*out));
	*error = NULL;
	if (!cJSON_IsObject(req->graph))
	{
		*error = pstrdup("the workflow is not a JSON object");
		return false;
	}
	if (req->bindings != NULL && !cJSON_IsNull(req->bindings) &&
		!cJSON_IsObject(req->bindings))
	{
		*error = pstrdup("the bindings are not a JSON object");
		return false;
	}

	graph = cJSON_Duplicate(req->graph, true);
	if (cJSON_IsObject(req->bindings))
	{
		cJSON_ArrayForEach(binding, req->bindings)
		{
			if (binding->string == NULL ||
				!comfyui_bind(req, graph, binding, error))
			{
				if (*error == NULL)
					*error = pstrdup("a binding has no name");
				cJSON_Delete(graph);
				return false;
			}
		}
	}

	body = cJSON_CreateObject();
	cJSON_AddItemToObject(body, "prompt", graph);
	if (req->client_id != NULL)
		cJSON_AddStringToObject(body, "client_id", req->client_id);
	if (req->prompt_id != NULL)
		cJSON_AddStringToObject(body, "prompt_id", req->prompt_id);
	comfyui_build_post(out, "/prompt", body, api_key);
	return true;
}

/* Does a model file name end in one of model_suffixes (any case)? */
static bool
comfyui_model_file(const char *name)
{
	size_t		len = strlen(name);
	int			i;

	for (i = 0; i < (int) lengthof(model_suffixes); i++)
	{
		size_t		slen = strlen(model_suffixes[i]);

		if (len > slen &&
			pg_strcasecmp(name + len - slen, model_suffixes[i]) == 0)
			return true;
	}
	return false;
}

/*
 * Is one validation error of a node the mark of a model file this server
 * lacks: value_not_in_list on a loader node, or on a value that names a
 * model file?
 */
static bool
comfyui_model_missing(const char *class_type, const cJSON *error)
{
	const char *type = igny8_json_string(error, "type");
	const char *value;

	if (type == NULL || strcmp(type, "value_not_in_list") != 0)
		return false;
	if (igny8_str_contains(class_type, "loader"))
		return true;
	value = igny8_json_string(igny8_json_member(error, "extra_info"),
							  "received_value");
	return value != NULL && comfyui_model_file(value);
}

/*
 * Describe one node error: "node 12 (UNETLoader): unet_name:
 * 'flux1-dev.safetensors' not in []".  value_not_in_list says it all in
 * its details; the other types need their message too ("Value 0 smaller
 * than min of 1: steps").
 */
static char *
comfyui_node_error(const char *node_id, const char *class_type,
				   const cJSON *error)
{
	const char *type = igny8_json_string(error, "type");
	const char *message = igny8_json_string(error, "message");
	const char *details = igny8_json_string(error, "details");
	const char *text;
	const char *sep = "";
	const char *more = "";

	if (details != NULL && details[0] == '\0')
		details = NULL;
	if (message != NULL && message[0] == '\0')
		message = NULL;
	if (type != NULL && strcmp(type, "value_not_in_list") == 0 &&
		details != NULL)
		text = details;
	else if (message != NULL)
	{
		text = message;
		if (details != NULL && strcmp(details, message) != 0)
		{
			sep = ": ";
			more = details;
		}
	}
	else if (details != NULL)
		text = details;
	else
		text = type ? type : "invalid";
	return comfyui_message("node %s (%s): %s%s%s", node_id,
						   class_type ? class_type : "no class_type",
						   text, sep, more);
}

/*
 * Classify a 400 prompt_outputs_failed_validation by its node errors: all
 * of them model files this server lacks falls back (another server may
 * have them); anything else is the workflow's fault.  *message describes
 * the first error of the deciding kind.
 */
static Igny8ErrorClass
comfyui_validation_error(const cJSON *json, char **message)
{
	const cJSON *node;
	const cJSON *error;
	int			nerrors = 0;
	bool		all_missing = true;
	char	   *first_missing = NULL;
	char	   *first_other = NULL;

	cJSON_ArrayForEach(node, igny8_json_member(json, "node_errors"))
	{
		const char *class_type = igny8_json_string(node, "class_type");
		const cJSON *errors = igny8_json_member(node, "errors");

		if (node->string == NULL || !cJSON_IsArray(errors))
			continue;
		cJSON_ArrayForEach(error, errors)
		{
			if (!cJSON_IsObject(error))
				continue;
			nerrors++;
			if (comfyui_model_missing(class_type, error))
			{
				if (first_missing == NULL)
					first_missing = comfyui_node_error(node->string,
													   class_type, error);
			}
			else
			{
				all_missing = false;
				if (first_other == NULL)
					first_other = comfyui_node_error(node->string,
													 class_type, error);
			}
		}
	}

	if (nerrors > 0 && all_missing)
	{
		*message = first_missing;
		return IGNY8_ERR_FALLBACK;
	}
	if (first_missing != NULL)
		pfree(first_missing);
	*message = first_other;		/* NULL: the top-level message says it */
	return IGNY8_ERR_CALLER;
}

/*
 * Classify a non-2xx answer to POST /prompt (protocols.md 2.1, 2.6).  A
 * 400 is read by its error type: a node class this server lacks
 * (missing_node_type; invalid_prompt "... does not exist" on older
 * builds) or model files it lacks fall back; a node without class_type,
 * a broken link and every other validation error are the caller's.  Any
 * other status goes by the generic rules.
 */
static void
comfyui_submit_error(const Igny8HttpResponse *resp, const cJSON *json,
					 Igny8ProviderError *err)
{
	const cJSON *error = igny8_json_member(json, "error");
	const char *type = igny8_json_string(error, "type");
	const char *message = igny8_error_message(json);
	const char *details = igny8_json_string(error, "details");
	Igny8ErrorClass cls;
	char	   *text = NULL;

	cls = igny8_classify_status(resp->status, resp->should_retry);
	if (resp->status == 400 && type != NULL)
	{
		const cJSON *extra = igny8_json_member(error, "extra_info");
		const char *node_id = igny8_json_string(extra, "node_id");
		const char *class_type = igny8_json_string(extra, "class_type");

		cls = IGNY8_ERR_CALLER;
		if (strcmp(type, "prompt_outputs_failed_validation") == 0)
			cls = comfyui_validation_error(json, &text);
		else if (strcmp(type, "missing_node_type") == 0)
		{
			/* without a class_type the workflow is broken, on any server */
			if (class_type != NULL && class_type[0] != '\0')
				cls = IGNY8_ERR_FALLBACK;
			if (node_id != NULL && message != NULL)
				text = comfyui_message("node %s (%s): %s", node_id,
									   class_type ? class_type : "no class_type",
									   message);
		}
		else if (strcmp(type, "invalid_prompt") == 0 &&
				 igny8_str_contains(message, "does not exist"))
			cls = IGNY8_ERR_FALLBACK;

		if (text == NULL && message != NULL && details != NULL &&
			details[0] != '\0' && strcmp(details, message) != 0)
			text = comfyui_message("%s: %s", message, details);
	}
	igny8_set_http_error(err, cls, resp, COMFYUI_NAME,
						 text != NULL ? text : message);
	if (text != NULL)
		pfree(text);
}

/* Fill *err for a 2xx answer that is not what was expected. */
static void
comfyui_malformed(Igny8ProviderError *err, const char *what)
{
	igny8_set_error(err, IGNY8_ERR_RETRY, -1,
					"malformed response from " COMFYUI_NAME ": %s", what);
	err->retry_once = true;
}

/* A prompt_id as ComfyUI names prompts: short UTF-8, not empty. */
static bool
comfyui_prompt_id_ok(const char *id)
{
	size_t		len = strlen(id);

	return len > 0 && len <= IGNY8_PROMPT_ID_MAX && igny8_utf8_valid(id, len);
}

/*
 * Read the answer to POST /prompt: true on a 2xx with a prompt_id, which
 * goes to *prompt_id (palloc'd).  A 200 may carry node_errors for outputs
 * that were dropped while others were queued; the prompt runs, so that is
 * a success.
 */
bool
igny8_comfyui_parse_submit(const Igny8HttpResponse *resp, char **prompt_id,
						   int64 *number, Igny8ProviderError *err)
{
	cJSON	   *json;
	const char *id;
	bool		ok = false;

	*prompt_id = NULL;
	if (number)
		*number = -1;
	igny8_init_error(err);
	json = igny8_json_parse_body(resp);
	if (resp->status < 200 || resp->status >= 300)
		comfyui_submit_error(resp, json, err);
	else if (json == NULL)
		comfyui_malformed(err, "not JSON");
	else if (igny8_json_has_nul(resp->body, resp->body_len))
		comfyui_malformed(err, "a string contains a NUL character");
	else if ((id = igny8_json_string(json, "prompt_id")) == NULL ||
			 id[0] == '\0')
		comfyui_malformed(err, "no prompt_id");
	else if (!comfyui_prompt_id_ok(id))
		comfyui_malformed(err, "the prompt_id is not a short UTF-8 string");
	else
	{
		cJSON	   *n = cJSON_GetObjectItemCaseSensitive(json, "number");

		*prompt_id = pstrdup(id);
		/* its place in ComfyUI's queue order (a float if one was asked for) */
		if (number && cJSON_IsNumber(n) && n->valuedouble >= 0 &&
			n->valuedouble < 9007199254740992.0)
			*number = (int64) n->valuedouble;
		ok = true;
	}
	cJSON_Delete(json);
	return ok;
}

/* Build GET {prefix}{name}, the name percent-encoded. */
static void
comfyui_build_get_named(Igny8HttpRequest *out, const char *prefix,
						const char *name, const char *api_key)
{
	char	   *escaped = comfyui_escape(name);
	char	   *path = psprintf("%s%s", prefix, escaped);

	igny8_build_get(out, path, api_key);
	pfree(path);
	pfree(escaped);
}

/* Build GET /history/{prompt_id}. */
void
igny8_comfyui_build_history(const char *prompt_id, const char *api_key,
							Igny8HttpRequest *out)
{
	comfyui_build_get_named(out, "/history/", prompt_id, api_key);
}

/*
 * The data of the first [event, data] pair of a history's status.messages
 * whose event is name: found (true) or not; *data may be NULL.
 */
static bool
comfyui_find_message(const cJSON *messages, const char *name,
					 const cJSON **data)
{
	const cJSON *pair;

	*data = NULL;
	if (!cJSON_IsArray(messages))
		return false;
	cJSON_ArrayForEach(pair, messages)
	{
		const cJSON *event = cJSON_GetArrayItem(pair, 0);

		if (cJSON_IsArray(pair) && cJSON_IsString(event) &&
			strcmp(event->valuestring, name) == 0)
		{
			*data = cJSON_GetArrayItem(pair, 1);
			return true;
		}
	}
	return false;
}

/*
 * Fill *err for an execution_error: "execution error in node 3
 * (KSampler): torch.OutOfMemoryError: CUDA out of memory...".  Whatever
 * the exception, it may not happen again (out of memory, a model still
 * loading): one more try, then the next deployment.
 */
static void
comfyui_execution_error(const cJSON *data, Igny8ProviderError *err)
{
	const char *node_id = igny8_json_string(data, "node_id");
	const char *node_type = igny8_json_string(data, "node_type");
	const char *type = igny8_json_string(data, "exception_type");
	const char *message = igny8_json_string(data, "exception_message");
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "execution error");
	if (node_id != NULL)
		appendStringInfo(&buf, " in node %s (%s)", node_id,
						 node_type ? node_type : "unknown type");
	if (type != NULL && type[0] != '\0')
		appendStringInfo(&buf, ": %s", type);
	if (message != NULL && message[0] != '\0')
		appendStringInfo(&buf, ": %s", message);
	igny8_set_error(err, IGNY8_ERR_RETRY, -1, "%s", buf.data);
	err->retry_once = true;
	pfree(buf.data);
}

/*
 * Count (images NULL) or copy the well-formed images of type want (NULL:
 * "output" or "temp") listed by the outputs of a history entry.  An
 * image without a type is an "output"; one without a name is skipped.
 */
static int
comfyui_images(const cJSON *outputs, const char *want,
			   Igny8ComfyImage *images)
{
	const cJSON *output;
	const cJSON *image;
	int			n = 0;

	cJSON_ArrayForEach(output, outputs)
	{
		const cJSON *list = igny8_json_member(output, "images");

		if (!cJSON_IsArray(list))
			continue;
		cJSON_ArrayForEach(image, list)
		{
			const char *filename = igny8_json_string(image, "filename");
			const char *subfolder = igny8_json_string(image, "subfolder");
			const char *type = igny8_json_string(image, "type");

			if (filename == NULL || filename[0] == '\0')
				continue;
			if (type == NULL)
				type = "output";
			if (want != NULL ? strcmp(type, want) != 0 :
				strcmp(type, "output") != 0 && strcmp(type, "temp") != 0)
				continue;
			if (images != NULL)
			{
				images[n].filename = pstrdup(filename);
				images[n].subfolder = pstrdup(subfolder ? subfolder : "");
				images[n].type = pstrdup(type);
			}
			n++;
		}
	}
	return n;
}

/* Read one prompt's history entry (protocols.md 2.2). */
static Igny8ComfyState
comfyui_history_entry(const cJSON *entry, Igny8ComfyImage **images,
					  int *nimages, Igny8ProviderError *err)
{
	const cJSON *status = igny8_json_member(entry, "status");
	const cJSON *outputs = igny8_json_member(entry, "outputs");
	const cJSON *messages = igny8_json_member(status, "messages");
	const char *status_str = igny8_json_string(status, "status_str");
	const cJSON *data;
	int			n;

	if (!cJSON_IsObject(entry))
	{
		comfyui_malformed(err, "the history entry is not an object");
		return IGNY8_COMFY_FAILED;
	}
	if (comfyui_find_message(messages, "execution_interrupted", &data))
	{
		igny8_set_error(err, IGNY8_ERR_FALLBACK, -1, "interrupted");
		return IGNY8_COMFY_FAILED;
	}
	if (comfyui_find_message(messages, "execution_error", &data))
	{
		comfyui_execution_error(data, err);
		return IGNY8_COMFY_FAILED;
	}
	if (status_str != NULL && strcmp(status_str, "error") == 0)
	{
		comfyui_execution_error(NULL, err);
		return IGNY8_COMFY_FAILED;
	}
	/* builds before status existed list only outputs */
	if (status_str != NULL && strcmp(status_str, "success") != 0)
	{
		comfyui_malformed(err, "unknown status_str");
		return IGNY8_COMFY_FAILED;
	}
	if (!cJSON_IsObject(outputs))
	{
		comfyui_malformed(err, "no outputs in the history entry");
		return IGNY8_COMFY_FAILED;
	}

	/* saved images; previews only when nothing was saved */
	n = comfyui_images(outputs, "output", NULL);
	if (n > 0)
	{
		*images = palloc(sizeof(Igny8ComfyImage) * n);
		*nimages = comfyui_images(outputs, "output", *images);
		return IGNY8_COMFY_DONE;
	}
	n = comfyui_images(outputs, "temp", NULL);
	if (n > 0)
	{
		*images = palloc(sizeof(Igny8ComfyImage) * n);
		*nimages = comfyui_images(outputs, "temp", *images);
		return IGNY8_COMFY_DONE;
	}
	igny8_set_error(err, IGNY8_ERR_FALLBACK, -1,
					"the workflow produced no image");
	return IGNY8_COMFY_FAILED;
}

/* Read the answer to GET /history/{prompt_id} (see provider.h). */
Igny8ComfyState
igny8_comfyui_parse_history(const Igny8HttpResponse *resp,
							const char *prompt_id,
							Igny8ComfyImage **images, int *nimages,
							Igny8ProviderError *err)
{
	cJSON	   *json;
	const cJSON *entry;
	Igny8ComfyState state = IGNY8_COMFY_UNREAD;

	*images = NULL;
	*nimages = 0;
	igny8_init_error(err);
	json = igny8_json_parse_body(resp);
	if (resp->status < 200 || resp->status >= 300)
		igny8_set_http_error(err,
							 igny8_classify_status(resp->status,
												   resp->should_retry),
							 resp, COMFYUI_NAME, igny8_error_message(json));
	else if (json == NULL)
		comfyui_malformed(err, "not JSON");
	else if (!cJSON_IsObject(json))
		comfyui_malformed(err, "not a JSON object");
	/* a NUL would cut a file name without a word */
	else if (igny8_json_has_nul(resp->body, resp->body_len))
		comfyui_malformed(err, "a string contains a NUL character");
	else
	{
		entry = prompt_id != NULL ?
			cJSON_GetObjectItemCaseSensitive(json, prompt_id) : json->child;
		if (entry == NULL)
			state = IGNY8_COMFY_PENDING;
		else
			state = comfyui_history_entry(entry, images, nimages, err);
	}
	cJSON_Delete(json);
	return state;
}

/* Build GET /view for one output image, each value percent-encoded. */
void
igny8_comfyui_build_view(const Igny8ComfyImage *image, const char *api_key,
						 Igny8HttpRequest *out)
{
	char	   *filename = comfyui_escape(image->filename);
	char	   *subfolder = comfyui_escape(image->subfolder);
	char	   *type = comfyui_escape(image->type ? image->type : "output");
	char	   *path;

	path = psprintf("/view?filename=%s&subfolder=%s&type=%s", filename,
					subfolder, type);
	igny8_build_get(out, path, api_key);
	pfree(path);
	pfree(filename);
	pfree(subfolder);
	pfree(type);
}

/*
 * Read the answer to GET /view: the PNG itself, checked; result->data
 * points into resp->body.  A 4xx falls back rather than blame the
 * caller: the name came from this server's own history.
 */
bool
igny8_comfyui_parse_view(const Igny8HttpResponse *resp,
						 Igny8ImageResult *result, Igny8ProviderError *err)
{
	char	   *problem;
	int			width;
	int			height;

	memset(result, 0, sizeof(*result));
	igny8_init_error(err);
	if (resp->status < 200 || resp->status >= 300)
	{
		cJSON	   *json = igny8_json_parse_body(resp);
		Igny8ErrorClass cls;

		cls = igny8_classify_status(resp->status, resp->should_retry);
		if (cls == IGNY8_ERR_CALLER)
			cls = IGNY8_ERR_FALLBACK;
		igny8_set_http_error(err, cls, resp, COMFYUI_NAME,
							 igny8_error_message(json));
		cJSON_Delete(json);
		return false;
	}
	if (!igny8_png_check(resp->body, resp->body_len, &width, &height,
						 &problem))
	{
		igny8_set_error(err, IGNY8_ERR_RETRY, -1,
						"malformed image from " COMFYUI_NAME ": %s", problem);
		err->retry_once = true;
		pfree(problem);
		return false;
	}
	result->data = (char *) resp->body;
	result->len = resp->body_len;
	result->mime_type = "image/png";
	result->width = width;
	result->height = height;
	result->revised_prompt = NULL;
	return true;
}

/*
 * Build one of the cleanup calls for an abandoned prompt.  False, with
 * out left empty, without a prompt_id: an interrupt without one stops
 * whatever runs, another client's prompt included (protocols.md 7).  An
 * interrupt with one does the same on a server from before the targeted
 * interrupt: the caller sends it only for a prompt GET /queue showed
 * running (image.c).
 */
bool
igny8_comfyui_build_cancel(Igny8ComfyCancel what, const char *prompt_id,
						   const char *api_key, Igny8HttpRequest *out)
{
	cJSON	   *body;
	cJSON	   *ids;
	const char *path;

	memset(out, 0, sizeof(*out));
	if (prompt_id == NULL || prompt_id[0] == '\0')
		return false;
	if (what == IGNY8_COMFY_CANCEL_QUEUED)
	{
		igny8_build_get(out, "/queue", api_key);
		return true;
	}
	if (what == IGNY8_COMFY_CANCEL_AWAIT)
	{
		igny8_comfyui_build_history(prompt_id, api_key, out);
		return true;
	}
	body = cJSON_CreateObject();
	switch (what)
	{
		case IGNY8_COMFY_CANCEL_DELETE:
		case IGNY8_COMFY_CANCEL_FORGET:
			ids = cJSON_AddArrayToObject(body, "delete");
			cJSON_AddItemToArray(ids, cJSON_CreateString(prompt_id));
			path = (what == IGNY8_COMFY_CANCEL_DELETE) ? "/queue" : "/history";
			break;
		case IGNY8_COMFY_CANCEL_INTERRUPT:
			cJSON_AddStringToObject(body, "prompt_id", prompt_id);
			path = "/interrupt";
			break;
		default:
			cJSON_Delete(body);
			return false;
	}
	comfyui_build_post(out, path, body, api_key);
	return true;
}

/* The JSON object of a GET /queue answer, or NULL (not a 200, not JSON). */
static cJSON *
queue_json(const Igny8HttpResponse *resp)
{
	cJSON	   *json;

	if (resp->status != 200)
		return NULL;
	json = igny8_json_parse_body(resp);
	if (!cJSON_IsObject(json))
	{
		cJSON_Delete(json);
		return NULL;
	}
	return json;
}

/*
 * Where GET /queue shows the prompt prompt_id: *running when it is in
 * queue_running, *waiting when it is in queue_pending (an entry is
 * [number, prompt_id, ...]).  False when the answer is not a queue (not a
 * 200, not JSON, neither list there): it says nothing of the prompt.
 */
bool
igny8_comfyui_parse_queue_has(const Igny8HttpResponse *resp,
							  const char *prompt_id,
							  bool *running, bool *waiting)
{
	static const char *const lists[] = {"queue_running", "queue_pending"};
	bool	   *found[] = {running, waiting};
	cJSON	   *json;
	bool		any = false;

	*running = false;
	*waiting = false;
	if ((json = queue_json(resp)) == NULL)
		return false;
	for (int i = 0; i < (int) lengthof(lists); i++)
	{
		cJSON	   *list = cJSON_GetObjectItemCaseSensitive(json, lists[i]);
		cJSON	   *entry;

		if (!cJSON_IsArray(list))
			continue;
		any = true;
		cJSON_ArrayForEach(entry, list)
		{
			cJSON	   *id = cJSON_IsArray(entry) ?
				cJSON_GetArrayItem(entry, 1) : NULL;

			if (cJSON_IsString(id) && strcmp(id->valuestring, prompt_id) == 0)
				*found[i] = true;
		}
	}
	cJSON_Delete(json);
	return any;
}

/*
 * The prompts of GET /queue (running and waiting) whose client_id begins
 * with prefix and is not own: their prompt_ids, palloc'd, in *ids (*nids
 * of them; NULL and 0 for none).  An entry is [number, prompt_id, graph,
 * extra_data, outputs...], and ComfyUI keeps a POST's client_id in its
 * extra_data (protocols.md 2.3).  False when the answer is not a queue
 * (not a 200, not JSON, neither list there).
 */
bool
igny8_comfyui_parse_queue_of(const Igny8HttpResponse *resp,
							 const char *prefix, const char *own,
							 char ***ids, int *nids)
{
	static const char *const lists[] = {"queue_running", "queue_pending"};
	cJSON	   *json;
	bool		any = false;
	size_t		plen = strlen(prefix);
	int			cap = 0;

	*ids = NULL;
	*nids = 0;
	if ((json = queue_json(resp)) == NULL)
		return false;
	for (int i = 0; i < (int) lengthof(lists); i++)
	{
		cJSON	   *list = cJSON_GetObjectItemCaseSensitive(json, lists[i]);
		cJSON	   *entry;

		if (!cJSON_IsArray(list))
			continue;
		any = true;
		cJSON_ArrayForEach(entry, list)
		{
			cJSON	   *id;
			cJSON	   *extra;
			const char *client;

			if (!cJSON_IsArray(entry))
				continue;
			id = cJSON_GetArrayItem(entry, 1);
			extra = cJSON_GetArrayItem(entry, 3);
			if (!cJSON_IsString(id) || !comfyui_prompt_id_ok(id->valuestring) ||
				!cJSON_IsObject(extra))
				continue;
			client = igny8_json_string(extra, "client_id");
			if (client != NULL && strncmp(client, prefix, plen) == 0 &&
				strcmp(client, own) != 0)
			{
				if (*nids == cap)
				{
					cap = cap ? cap * 2 : 8;
					*ids = *ids ? repalloc(*ids, sizeof(char *) * cap) :
						palloc(sizeof(char *) * cap);
				}
				(*ids)[(*nids)++] = pstrdup(id->valuestring);
			}
		}
	}
	cJSON_Delete(json);
	return any;
}

/* ----- the model files a workflow needs (the health probe) ----- */

static bool
comfyui_is_model_file(const char *value)
{
	static const char *const exts[] = {".safetensors", ".sft", ".ckpt",
	".pt", ".pth", ".bin", ".gguf", NULL};
	size_t		len = strlen(value);

	for (int i = 0; exts[i]; i++)
	{
		size_t		elen = strlen(exts[i]);

		if (len > elen && pg_strcasecmp(value + len - elen, exts[i]) == 0)
			return true;
	}
	return false;
}

/*
 * Add the model files a workflow's loaders name to *files (n of them, cap
 * allocated), each (class, input, file) once: the string inputs of nodes
 * whose class ends in "Loader" or "LoaderSimple" that look like model
 * files.  Returns the new count.
 */
int
igny8_comfyui_model_files(const cJSON *graph, Igny8ComfyFile **files, int n,
						  int *cap)
{
	const cJSON *node;

	cJSON_ArrayForEach(node, graph)
	{
		const char *class_type = igny8_json_string(node, "class_type");
		const cJSON *inputs = igny8_json_member(node, "inputs");
		const cJSON *input;
		size_t		clen;

		if (class_type == NULL || !cJSON_IsObject(inputs))
			continue;
		clen = strlen(class_type);
		if (!((clen >= 6 && strcmp(class_type + clen - 6, "Loader") == 0) ||
			  (clen >= 12 && strcmp(class_type + clen - 12, "LoaderSimple") == 0)))
			continue;
		cJSON_ArrayForEach(input, inputs)
		{
			bool		seen = false;

			if (!cJSON_IsString(input) || input->string == NULL ||
				!comfyui_is_model_file(input->valuestring))
				continue;
			for (int i = 0; i < n && !seen; i++)
				seen = strcmp((*files)[i].class_type, class_type) == 0 &&
					strcmp((*files)[i].input, input->string) == 0 &&
					strcmp((*files)[i].file, input->valuestring) == 0;
			if (seen)
				continue;
			if (n >= *cap)
			{
				*cap = Max(*cap * 2, 8);
				*files = *files ? repalloc(*files, sizeof(Igny8ComfyFile) * *cap) :
					palloc(sizeof(Igny8ComfyFile) * *cap);
			}
			(*files)[n].class_type = pstrdup(class_type);
			(*files)[n].input = pstrdup(input->string);
			(*files)[n].file = pstrdup(input->valuestring);
			(*files)[n].present = false;
			n++;
		}
	}
	return n;
}

/* Build GET /object_info/{class}. */
void
igny8_comfyui_build_object_info(const char *class_type, const char *api_key,
								Igny8HttpRequest *out)
{
	comfyui_build_get_named(out, "/object_info/", class_type, api_key);
}

/* The options of a combo input spec: [[...], {...}] or ["COMBO", {"options": [...]}]. */
static const cJSON *
comfyui_combo_options(const cJSON *spec)
{
	const cJSON *first = cJSON_GetArrayItem(spec, 0);

	if (cJSON_IsArray(first))
		return first;
	if (cJSON_IsString(first) && strcmp(first->valuestring, "COMBO") == 0)
	{
		const cJSON *opts = igny8_json_member(cJSON_GetArrayItem(spec, 1),
											  "options");

		if (cJSON_IsArray(opts))
			return opts;
	}
	return NULL;
}

/*
 * The node classes a workflow uses, added to *classes (n of them, cap
 * allocated), each once, in the order they first appear.  Returns the new
 * count.
 */
int
igny8_comfyui_node_classes(const cJSON *graph, char ***classes, int n,
						   int *cap)
{
	const cJSON *node;

	cJSON_ArrayForEach(node, graph)
	{
		const char *class_type = igny8_json_string(node, "class_type");
		bool		seen = false;

		if (class_type == NULL || class_type[0] == '\0')
			continue;
		for (int i = 0; i < n && !seen; i++)
			seen = strcmp((*classes)[i], class_type) == 0;
		if (seen)
			continue;
		if (n >= *cap)
		{
			*cap = Max(*cap * 2, 8);
			*classes = *classes ? repalloc(*classes, sizeof(char *) * *cap) :
				palloc(sizeof(char *) * *cap);
		}
		(*classes)[n++] = pstrdup(class_type);
	}
	return n;
}

/*
 * Read GET /object_info/{class}: mark present every file of that class
 * that the server lists for its input.  IGNY8_COMFY_CLASS_FOUND when the
 * answer describes the class; IGNY8_COMFY_CLASS_UNKNOWN when it is a 2xx
 * JSON object without it (ComfyUI answers {} for a class it does not have:
 * a custom node that is not installed); IGNY8_COMFY_CLASS_ERROR for
 * anything else (not a 2xx, not a JSON object).  Files of a class that is
 * not found stay not present: a class ComfyUI does not know cannot load
 * them either.
 */
Igny8ComfyClass
igny8_comfyui_parse_object_info(const Igny8HttpResponse *resp,
								const char *class_type,
								Igny8ComfyFile *files, int n)
{
	cJSON	   *json;
	const cJSON *inputs;
	Igny8ComfyClass verdict;

	if (resp->status < 200 || resp->status >= 300)
		return IGNY8_COMFY_CLASS_ERROR;
	json = igny8_json_parse_body(resp);
	if (!cJSON_IsObject(json))
	{
		cJSON_Delete(json);
		return IGNY8_COMFY_CLASS_ERROR;
	}
	inputs = igny8_json_member(igny8_json_member(json, class_type), "input");
	if (cJSON_IsObject(inputs))
		verdict = IGNY8_COMFY_CLASS_FOUND;
	else if (igny8_json_member(json, class_type) == NULL)
		verdict = IGNY8_COMFY_CLASS_UNKNOWN;
	else
		verdict = IGNY8_COMFY_CLASS_ERROR;	/* there, but not a description */
	for (int i = 0; verdict == IGNY8_COMFY_CLASS_FOUND && i < n; i++)
	{
		const cJSON *spec;
		const cJSON *opts;
		const cJSON *opt;

		if (strcmp(files[i].class_type, class_type) != 0)
			continue;
		spec = igny8_json_member(igny8_json_member(inputs, "required"),
								 files[i].input);
		if (spec == NULL)
			spec = igny8_json_member(igny8_json_member(inputs, "optional"),
									 files[i].input);
		opts = comfyui_combo_options(spec);
		cJSON_ArrayForEach(opt, opts)
		{
			if (cJSON_IsString(opt) &&
				strcmp(opt->valuestring, files[i].file) == 0)
			{
				files[i].present = true;
				break;
			}
		}
	}
	cJSON_Delete(json);
	return verdict;
}
