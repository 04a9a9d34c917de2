/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  Request building and response parsing for each backend protocol.
 *
 * The functions declared here are pure: they turn a normalized request into
 * the method, path, headers and JSON body of one HTTP call, and turn the
 * status and body of the answer into a result or a classified error.  They
 * never touch libcurl, SPI or shared memory, and they never ereport() except
 * on out-of-memory, so that they can be unit-tested and fuzzed on their own.
 * Memory comes from palloc() in CurrentMemoryContext; the caller resets the
 * context.  cJSON's allocator is hooked to palloc as well (igny8_json_init).
 *
 * Besides the text protocols, each backend has a health probe: one free GET
 * whose answer tells whether the service is up and has the models that
 * are configured for it.
 *
 * Text that comes from a provider is validated before it leaves these
 * functions, so that nothing downstream sees invalid UTF-8 or a string
 * silently cut short:
 *	 - The answer (Igny8TextResult.content and .thinking) must be valid
 *	   UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above
 *	   U+10FFFF) without a NUL character.  cJSON turns a \u0000 escape into
 *	   a NUL byte, which would cut the string where it stands, so a 2xx body
 *	   with a \u0000 escape or a raw NUL byte anywhere in it is refused
 *	   (cJSON cannot tell in which string it was).  A refused answer is a
 *	   malformed 2xx: IGNY8_ERR_RETRY with retry_once, and the message
 *	   "malformed response from <provider>: the answer is not valid UTF-8"
 *	   or "... : a string contains a NUL character".
 *	 - The labels (Igny8TextResult.model and .finish_reason) are cleaned,
 *	   not refused: each byte that does not start a valid UTF-8 sequence and
 *	   each control character (U+0000-U+001F, U+007F) becomes '?', and the
 *	   label is cut at a character boundary to at most IGNY8_MODEL_MAX or
 *	   IGNY8_FINISH_REASON_MAX bytes, so that it fits the worker's
 *	   fixed-size buffers whole.  An empty label is NULL, as an absent one.
 *	 - Error messages, probe summaries and the strings in a probe's
 *	   detail_json go through igny8_truncate_message: valid UTF-8, control
 *	   characters turned into spaces, cut with "..." appended.
 *
 * See docs/protocols.md for the wire facts each file follows; the other
 * files cite its sections as "protocols.md N".
 *
 *-------------------------------------------------------------------------
 */
#ifndef IGNY8_PROVIDER_H
#define IGNY8_PROVIDER_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef enum Igny8ProviderKind
{
	IGNY8_KIND_OLLAMA,
	IGNY8_KIND_OPENAI,			/* any OpenAI-compatible server */
	IGNY8_KIND_ANTHROPIC,
	IGNY8_KIND_COMFYUI,
	IGNY8_KIND_INVALID
} Igny8ProviderKind;

/* What to do after a failed call (protocols.md section 5). */
typedef enum Igny8ErrorClass
{
	IGNY8_ERR_NONE = 0,
	IGNY8_ERR_RETRY,			/* transient: same deployment after a backoff */
	IGNY8_ERR_FALLBACK,			/* give up on this deployment, try the next */
	IGNY8_ERR_CALLER			/* the request is wrong: stop, no fallback */
} Igny8ErrorClass;

/* One message of the normalized chat request. */
typedef struct Igny8Message
{
	const char *role;			/* "system", "user" or "assistant" */
	const char *content;
} Igny8Message;

/* A normalized text request, already routed to one deployment. */
typedef struct Igny8TextRequest
{
	const char *model;			/* provider-side model name, e.g. qwen3:32b */
	const Igny8Message *messages;	/* in order; system messages included */
	int			nmessages;
	int			max_tokens;		/* > 0: always decided by the router */
	bool		has_temperature;
	double		temperature;
	const cJSON *settings;		/* provider settings overlaid with the
								 * deployment's; a JSON object or NULL */
	bool		omit_think;		/* Ollama: do not send "think" (set after a
								 * "does not support thinking" refusal) */
} Igny8TextRequest;

#define IGNY8_MAX_HEADERS 8

/* One HTTP call to make, relative to the provider's base URL. */
typedef struct Igny8HttpRequest
{
	const char *method;			/* "GET" or "POST" (string constant) */
	char	   *path;			/* starts with '/', appended to base URL */
	char	   *body;			/* NUL-terminated JSON, or NULL for GET */
	int			nheaders;
	char	   *headers[IGNY8_MAX_HEADERS];	/* "Name: value" */
} Igny8HttpRequest;

/* The answer to one HTTP call, as the transport received it. */
typedef struct Igny8HttpResponse
{
	long		status;			/* HTTP status (> 0) */
	const char *body;			/* not necessarily NUL-terminated */
	size_t		body_len;
	bool		body_terminated;	/* body[body_len] is a NUL: parsed in
									 * place (igny8_json_parse_body) */
	double		retry_after;	/* seconds, from retry-after-ms or
								 * retry-after; < 0 when absent */
	int			should_retry;	/* x-should-retry: 1 true, 0 false, -1 absent */
} Igny8HttpResponse;

/*
 * Longest model and finish_reason labels, in bytes without the NUL: the
 * worker copies them into buffers of IGNY8_MODEL_LEN (128) and 32 bytes.
 */
#define IGNY8_MODEL_MAX 127
#define IGNY8_FINISH_REASON_MAX 31

/*
 * A successful text generation.  content and thinking are valid UTF-8
 * without NUL; model and finish_reason are cleaned labels (see the top of
 * this file).
 */
typedef struct Igny8TextResult
{
	char	   *content;		/* never NULL; <think> block stripped */
	char	   *thinking;		/* reasoning trace, or NULL */
	char	   *model;			/* model the provider reports, or NULL; at
								 * most IGNY8_MODEL_MAX bytes */
	int64_t		input_tokens;	/* all prompt tokens, cached ones included;
								 * 0 when the provider omits them */
	int64_t		cached_input_tokens;	/* the part of input_tokens read from
										 * the provider's prompt cache (never
										 * more than input_tokens); 0 when
										 * unknown */
	int64_t		cache_write_input_tokens;	/* the part of input_tokens
												 * written to the prompt
												 * cache (Anthropic's
												 * cache_creation_input_tokens;
												 * never more than
												 * input_tokens minus
												 * cached_input_tokens); 0
												 * when unknown */
	int64_t		output_tokens;
	char	   *finish_reason;	/* "stop", "length", "end_turn", ... or NULL;
								 * at most IGNY8_FINISH_REASON_MAX bytes */
} Igny8TextResult;

/* A failed call, classified. */
typedef struct Igny8ProviderError
{
	Igny8ErrorClass cls;
	char	   *message;		/* short reason, e.g. the provider's own
								 * error message, at most ~200 bytes */
	double		retry_after;	/* seconds the provider asked for, < 0 none */
	bool		drop_think;		/* Ollama refused "think": retry once with
								 * omit_think set (cls is IGNY8_ERR_RETRY) */
	bool		retry_once;		/* IGNY8_ERR_RETRY, but worth one retry only:
								 * a malformed 2xx, an Ollama load failure */
} Igny8ProviderError;

/* The operations of one text protocol. */
typedef struct Igny8TextProtocol
{
	const char *name;			/* "ollama", "openai", "anthropic" */
	bool		needs_key;		/* true: a missing API key is a config error */

	/* Build the chat completion call. api_key may be NULL. */
	void		(*build_chat) (const Igny8TextRequest *req, const char *api_key,
							   Igny8HttpRequest *out);

	/*
	 * Read the answer to build_chat's call, whatever its status.  Returns
	 * true and fills *result on success; returns false and fills *err
	 * (never IGNY8_ERR_NONE) otherwise.  A 200 whose body is not the
	 * expected JSON is an error (IGNY8_ERR_RETRY), not a crash.
	 */
	bool		(*parse_chat) (const Igny8HttpResponse *resp,
							   Igny8TextResult *result, Igny8ProviderError *err);
} Igny8TextProtocol;

/* The outcome of one health probe. */
typedef struct Igny8ProbeResult
{
	bool		reachable;		/* the service answered (any HTTP status) */
	bool		healthy;		/* answered 2xx with the expected body */
	bool		degraded;		/* healthy, but something configured is
								 * missing */
	char	   *summary;		/* one short line, e.g. "model qwen3:32b
								 * missing", "HTTP 500: <provider message>",
								 * never a key */
	char	   *detail_json;	/* a JSON object (text), see below */
} Igny8ProbeResult;

/*
 * The health probe of one protocol.  detail_json is always a JSON object:
 * on a non-2xx answer {"http_status":N,"error":"..."}, on a 2xx that is
 * not the expected JSON {"http_status":N,"error":"malformed response"},
 * and when healthy one of
 *	 Ollama, OpenAI: {"models_present":N,"models_listed":M,
 *					  "models_missing":["name",...]}
 *	   model check off (nmodels < 0):
 *					 {"models_listed":M,"model_check":false}
 *	 Anthropic:		 {"models_listed":M}
 *	 ComfyUI:		 {"comfyui_version":"..."|null,"devices":[{"name",
 *					  "vram_total","vram_free"}],"vram_free":B,"vram_total":B}
 * Summaries are at most IGNY8_ERRMSG_MAX + 3 bytes of valid UTF-8 without
 * control characters; so are the strings of detail_json that come from
 * the provider.
 */
typedef struct Igny8ProbeProtocol
{
	const char *name;
	/* Build the probe call: a free GET, never a paid completion. */
	void		(*build_probe) (const char *api_key, const cJSON *settings,
								Igny8HttpRequest *out);

	/*
	 * Read the answer, whatever its status.  models are the provider-side
	 * model names configured for this provider (nmodels may be 0).  The
	 * Ollama and OpenAI probes check each of them against the names the
	 * server lists; nmodels < 0 turns that check off (for a provider whose
	 * settings have "check_models": false, e.g. a single-model server that
	 * lists only its own id): a well-formed 2xx is then healthy, with the
	 * summary "N models listed (model check off)" and the detail
	 * {"models_listed":N,"model_check":false}.  The Anthropic and ComfyUI
	 * probes never compare models and ignore models and nmodels.
	 */
	void		(*parse_probe) (const Igny8HttpResponse *resp,
								const char *const *models, int nmodels,
								Igny8ProbeResult *out);
} Igny8ProbeProtocol;

/* ----- images ----- */

/*
 * A normalized image request, already routed to one deployment.  Sizes are
 * what the caller asked for; each protocol maps them to what its model
 * makes and says so in the result.
 */
typedef struct Igny8ImageRequest
{
	const char *model;			/* provider-side model (OpenAI: dall-e-3,
								 * gpt-image-1, ...; ComfyUI: a label only) */
	const char *prompt;			/* UTF-8, never empty */
	const char *negative_prompt;	/* or NULL */
	int			width;			/* 0: the default */
	int			height;
	int			steps;			/* 0: the workflow's default */
	bool		has_cfg;
	double		cfg;
	uint64_t	seed;			/* always chosen by the caller side; any
								 * value 0 .. 2^64 - 1 (ComfyUI's range) is
								 * written exactly, as decimal digits */
	const char *quality;		/* or NULL: "standard", "hd", "low", ... */
	const char *style;			/* or NULL: "vivid", "natural" */
	const cJSON *settings;		/* provider settings overlaid with the
								 * deployment's; a JSON object or NULL */

	/* ComfyUI only */
	const cJSON *graph;			/* the workflow: API format, id -> node */
	const cJSON *bindings;		/* parameter -> [node id, input name] */
	const cJSON *defaults;		/* parameter -> value, or NULL */
	const char *client_id;		/* the worker's client id */
	const char *prompt_id;		/* a new UUID per attempt */
	const char *filename_prefix;	/* unique per attempt */
} Igny8ImageRequest;

/* An image made, checked, and the facts to return with it. */
typedef struct Igny8ImageResult
{
	char	   *data;			/* palloc'd, or into the response body: see
								 * the function */
	size_t		len;
	const char *mime_type;		/* "image/png" (a constant) */
	int			width;			/* from the image's own header */
	int			height;
	char	   *revised_prompt;	/* OpenAI dall-e-3, or NULL */
} Igny8ImageResult;

/* One output image ComfyUI's history lists (palloc'd strings). */
typedef struct Igny8ComfyImage
{
	char	   *filename;
	char	   *subfolder;		/* "" when none */
	char	   *type;			/* "output", or "temp" for a preview */
} Igny8ComfyImage;

/* Where a ComfyUI prompt stands, read from GET /history/{id}. */
typedef enum Igny8ComfyState
{
	IGNY8_COMFY_PENDING,		/* {}: queued or running */
	IGNY8_COMFY_DONE,			/* success: images listed */
	IGNY8_COMFY_FAILED,			/* execution error or interrupted: err set */
	IGNY8_COMFY_UNREAD			/* the answer (not 2xx, not a JSON object)
								 * says nothing of the prompt: err set */
} Igny8ComfyState;

/* What the cleanup of an abandoned ComfyUI prompt sends (image.c). */
typedef enum Igny8ComfyCancel
{
	IGNY8_COMFY_CANCEL_DELETE,	/* POST /queue {"delete":[id]}: if waiting */
	IGNY8_COMFY_CANCEL_INTERRUPT,	/* POST /interrupt {"prompt_id":id}: only
									 * once QUEUED showed it running (an old
									 * server interrupts whatever runs) */
	IGNY8_COMFY_CANCEL_QUEUED,	/* GET /queue: is it still running or
								 * waiting? */
	IGNY8_COMFY_CANCEL_AWAIT,	/* GET /history/{id}: is its entry written? */
	IGNY8_COMFY_CANCEL_FORGET	/* POST /history {"delete":[id]} */
} Igny8ComfyCancel;

/* Longest prompt_id parse_submit accepts, in bytes (a UUID has 36). */
#define IGNY8_PROMPT_ID_MAX 127

/*
 * ComfyUI (provider_comfyui.c).  Every call is a POST of JSON or a GET,
 * with "Authorization: Bearer <key>" only when api_key is not NULL (for
 * a proxy in front of ComfyUI, which has no auth of its own).
 *
 * build_submit fills the bound inputs of a copy of the graph and builds
 * POST /prompt with {"prompt":graph,"client_id":...,"prompt_id":...}
 * (client_id and prompt_id left out when NULL).  The parameters a binding
 * may name are prompt, negative_prompt, filename_prefix (strings), width,
 * height, steps (integers), cfg (a number) and seed (exact digits).  A
 * parameter without a binding is left as the graph has it; a bound one
 * whose request value is NULL, 0 (width, height, steps) or absent (cfg:
 * has_cfg false) takes defaults[param] when given, else keeps the graph's
 * value, except negative_prompt, which then becomes "".  False, with
 * *error set (palloc'd, at most IGNY8_ERRMSG_MAX + 3 bytes) and out
 * empty, when the graph is not an object, a binding names an unknown
 * parameter, is not [node id, input name], names a node or input the
 * graph lacks or an input that is a link, or a default has the wrong
 * type.
 *
 * parse_submit reads the answer: true on a 2xx with a prompt_id (at most
 * IGNY8_PROMPT_ID_MAX bytes of UTF-8), palloc'd into *prompt_id, even
 * when node_errors lists outputs that were dropped.  Otherwise err is
 * classified as protocols.md 2.6 says: a 400
 * prompt_outputs_failed_validation whose node errors are all
 * value_not_in_list on a loader (a node class named "...Loader..." or a
 * value that names a model file: the model file is missing), or a
 * missing_node_type naming a class (a custom node is missing; older
 * builds: invalid_prompt "... does not exist") is IGNY8_ERR_FALLBACK,
 * with the node error in the message ("node 12 (UNETLoader): unet_name:
 * 'flux1-dev.safetensors' not in []"); other 400s are IGNY8_ERR_CALLER
 * (the workflow is wrong: a broken link, exception_during_validation, a
 * node without class_type, prompt_no_outputs, a value out of range), the
 * message naming the first such node error.  Other statuses go by
 * igny8_classify_status (5xx and 429 retry).  A 2xx without a usable
 * prompt_id is IGNY8_ERR_RETRY with retry_once.
 *
 * parse_history: {} (no entry for prompt_id) is PENDING; an entry with
 * status_str "success" is DONE with the images of every output node in
 * *images (palloc'd array of *nimages): those of type "output", or when
 * there are none the "temp" previews.  An entry whose messages hold
 * execution_interrupted is FAILED, IGNY8_ERR_FALLBACK, "interrupted";
 * execution_error (or status_str "error") is FAILED, IGNY8_ERR_RETRY with
 * retry_once, "execution error in node 3 (KSampler):
 * torch.OutOfMemoryError: CUDA out of memory..."; a success without an
 * image is FAILED, IGNY8_ERR_FALLBACK, "the workflow produced no image";
 * a malformed 2xx is FAILED, IGNY8_ERR_RETRY retry_once; a non-2xx is
 * FAILED as igny8_classify_status says.  prompt_id NULL takes the first
 * entry.  *images is NULL and *nimages 0 unless DONE.
 *
 * build_view: GET /view?filename=&subfolder=&type= with each value
 * percent-encoded (RFC 3986: all but unreserved characters).
 * parse_view checks the bytes (igny8_png_check) and points result->data
 * at resp->body (no copy).  A 2xx that is not a whole PNG is
 * IGNY8_ERR_RETRY with retry_once; a 4xx is IGNY8_ERR_FALLBACK (the name
 * came from the server's own history), other statuses as
 * igny8_classify_status says.
 *
 * build_cancel builds the request for one step of the cleanup (a POST;
 * QUEUED is GET /queue, AWAIT build_history's GET).  It returns
 * false, with out empty, when prompt_id is NULL or empty (an interrupt
 * without one would stop whatever runs) or what is not a valid step.
 * parse_queue_has reads GET /queue for one prompt: running, waiting, or
 * neither; false when the answer is not a queue.
 */
extern bool igny8_comfyui_build_submit(const Igny8ImageRequest *req,
									   const char *api_key,
									   Igny8HttpRequest *out, char **error);
extern bool igny8_comfyui_parse_submit(const Igny8HttpResponse *resp,
									   char **prompt_id, int64 *number,
									   Igny8ProviderError *err);
extern void igny8_comfyui_build_history(const char *prompt_id,
										const char *api_key,
										Igny8HttpRequest *out);
extern Igny8ComfyState igny8_comfyui_parse_history(const Igny8HttpResponse *resp,
												   const char *prompt_id,
												   Igny8ComfyImage **images,
												   int *nimages,
												   Igny8ProviderError *err);
extern void igny8_comfyui_build_view(const Igny8ComfyImage *image,
									 const char *api_key,
									 Igny8HttpRequest *out);
extern bool igny8_comfyui_parse_view(const Igny8HttpResponse *resp,
									 Igny8ImageResult *result,
									 Igny8ProviderError *err);
extern bool igny8_comfyui_build_cancel(Igny8ComfyCancel what,
									   const char *prompt_id,
									   const char *api_key,
									   Igny8HttpRequest *out);
extern bool igny8_comfyui_parse_queue_of(const Igny8HttpResponse *resp,
										 const char *prefix, const char *own,
										 char ***ids, int *nids);
extern bool igny8_comfyui_parse_queue_has(const Igny8HttpResponse *resp,
										  const char *prompt_id,
										  bool *running, bool *waiting);

/*
 * The model files of a ComfyUI workflow, checked by the health probe
 * (provider_comfyui.c): model_files lists the string inputs of the loader
 * nodes (class ending in "Loader" or "LoaderSimple") that name model
 * files, each once; node_classes lists every node class a workflow uses,
 * each once; build_object_info makes GET /object_info/{class};
 * parse_object_info says whether the server has the class, and marks
 * present the files of that class its input's list holds ([[...]] or
 * ["COMBO", {"options": [...]}]).
 */
typedef struct Igny8ComfyFile
{
	char	   *class_type;
	char	   *input;
	char	   *file;
	bool		present;
} Igny8ComfyFile;

extern int	igny8_comfyui_model_files(const cJSON *graph, Igny8ComfyFile **files,
									  int n, int *cap);
extern void igny8_comfyui_build_object_info(const char *class_type,
											const char *api_key,
											Igny8HttpRequest *out);
/* what GET /object_info/{class} says of the class */
typedef enum Igny8ComfyClass
{
	IGNY8_COMFY_CLASS_ERROR = -1,	/* no answer about it */
	IGNY8_COMFY_CLASS_UNKNOWN = 0,	/* {}: the node is not installed */
	IGNY8_COMFY_CLASS_FOUND = 1
} Igny8ComfyClass;

extern int	igny8_comfyui_node_classes(const cJSON *graph, char ***classes,
									   int n, int *cap);
extern Igny8ComfyClass igny8_comfyui_parse_object_info(const Igny8HttpResponse *resp,
													   const char *class_type,
													   Igny8ComfyFile *files,
													   int n);

/*
 * OpenAI images (provider_openai.c): POST /v1/images/generations.
 * image_size maps a size to the one the model makes nearest in aspect
 * ratio, then in area (dall-e-3: 1024x1024, 1792x1024, 1024x1792;
 * gpt-image-*: 1024x1024, 1536x1024, 1024x1536; dall-e-2: 256, 512, 1024
 * square); a size not positive gets 1024x1024; an unknown model (another
 * server's) makes the size asked.  build_image sends n 1, that size
 * (none when unknown and not positive), response_format b64_json for
 * dall-e-* only (GPT image models refuse it), quality (dall-e-3: "hd" for
 * hd or high, else "standard"; gpt-image: low|medium|high|auto, standard
 * as medium and hd as high; otherwise none), style (dall-e-3 only: vivid
 * or natural), then the setting "extra_body" merged in as for chat (the
 * request's fields win, no "stream").  parse_image decodes data[0].b64_json
 * (at most max_image bytes decoded, else IGNY8_ERR_FALLBACK "image larger
 * than N bytes"), checks the PNG, and returns revised_prompt (when valid
 * UTF-8); result->data is palloc'd.  A 2xx with a URL instead is
 * IGNY8_ERR_FALLBACK, with an image that is not PNG because output_format
 * says otherwise IGNY8_ERR_FALLBACK, otherwise malformed IGNY8_ERR_RETRY
 * with retry_once.  Errors are classified as for text; a safety refusal
 * (400 content_policy_violation, moderation_blocked or
 * image_generation_user_error) is IGNY8_ERR_CALLER.
 */
extern void igny8_openai_image_size(const char *model, int width, int height,
									int *out_width, int *out_height);
extern const char *igny8_openai_image_billed_quality(const char *model,
													 const char *quality);
extern void igny8_openai_build_image(const Igny8ImageRequest *req,
									 const char *api_key,
									 Igny8HttpRequest *out);
extern bool igny8_openai_parse_image(const Igny8HttpResponse *resp,
									 size_t max_image,
									 Igny8ImageResult *result,
									 Igny8ProviderError *err);

/*
 * Image helpers (provider_image.c), binary-safe.  png_check: the 8-byte
 * signature, an IHDR chunk first with its length 13, a valid CRC, width
 * and height in 1..65535 and valid depth and color type, then every
 * chunk whole with a valid CRC, an IDAT, and IEND last with nothing
 * after it; false with *error set (a short palloc'd reason such as "not
 * a PNG image", "truncated PNG image", "PNG IHDR CRC mismatch") and
 * *width, *height 0 otherwise.  base64_decoded_len: the size padded
 * base64 of that length decodes to (from the length and the trailing
 * '='), or SIZE_MAX when the length is not a multiple of 4.
 * base64_decode: standard alphabet with padding, whitespace refused,
 * into one palloc'd buffer (NUL-terminated, the NUL not counted); false,
 * with nothing allocated, when malformed or when the decoded size would
 * pass max (checked before any allocation).
 */
extern bool igny8_png_check(const char *data, size_t len, int *width,
							int *height, char **error);
extern size_t igny8_base64_decoded_len(const char *in, size_t len);
extern bool igny8_base64_decode(const char *in, size_t len, size_t max,
								char **out, size_t *outlen);

/* provider.c */
extern Igny8ProviderKind igny8_provider_kind_from_name(const char *name);
extern const char *igny8_provider_kind_name(Igny8ProviderKind kind);
extern const Igny8TextProtocol *igny8_text_protocol(Igny8ProviderKind kind);
extern const Igny8ProbeProtocol *igny8_probe_protocol(Igny8ProviderKind kind);
extern void igny8_json_init(void);
extern Igny8ErrorClass igny8_classify_status(long status, int should_retry);
extern char *igny8_truncate_message(const char *msg, size_t len, size_t max);
extern bool igny8_utf8_valid(const char *str, size_t len);
extern size_t igny8_utf8_trim_end(const char *s, size_t len);
extern void igny8_clean_label(char *label, size_t max);
extern bool igny8_json_has_nul(const char *body, size_t len);
extern char *igny8_strip_think(const char *content, char **thinking);
extern char *igny8_take_answer(const cJSON *item, char **thinking);
extern bool igny8_parse_answer(const Igny8HttpResponse *resp,
							   const char *provider,
							   Igny8TextResult *result,
							   Igny8ProviderError *err,
							   bool (*success) (const cJSON *json, long status,
												Igny8TextResult *result,
												Igny8ProviderError *err),
							   void (*failure) (const Igny8HttpResponse *resp,
												const cJSON *json,
												Igny8ProviderError *err));
extern void igny8_build_get(Igny8HttpRequest *out, const char *path,
							const char *bearer_key);
extern void igny8_add_header(Igny8HttpRequest *out, const char *fmt,...)
			pg_attribute_printf(2, 3);

/* provider.c: helpers shared by the provider_*.c files */
#define IGNY8_ERRMSG_MAX 200	/* bytes kept of an error message */

extern void igny8_init_outputs(Igny8TextResult *result,
							   Igny8ProviderError *err);
extern void igny8_init_error(Igny8ProviderError *err);
extern void igny8_set_error(Igny8ProviderError *err, Igny8ErrorClass cls,
							double retry_after, const char *fmt,...)
			pg_attribute_printf(4, 5);
extern void igny8_set_http_error(Igny8ProviderError *err, Igny8ErrorClass cls,
								 const Igny8HttpResponse *resp,
								 const char *provider, const char *message);
extern bool igny8_str_contains(const char *haystack, const char *needle);
extern const char *igny8_error_message(const cJSON *json);
extern bool igny8_context_exceeded(const cJSON *json);
extern cJSON *igny8_json_parse(const char *body, size_t len);
extern cJSON *igny8_json_parse_body(const Igny8HttpResponse *resp);
extern char *igny8_json_print(const cJSON *item);
extern cJSON *igny8_json_member(const cJSON *object, const char *key);
extern const char *igny8_json_string(const cJSON *object, const char *key);
extern int64_t igny8_json_count(const cJSON *object, const char *key);
extern int64_t igny8_count_add(int64_t a, int64_t b);
extern void igny8_json_set(cJSON *object, const char *key, cJSON *item);
extern void igny8_json_merge(cJSON *dst, const cJSON *src, bool overwrite);
extern void igny8_probe_http_error(const Igny8HttpResponse *resp,
								   const char *message,
								   Igny8ProbeResult *out);
extern void igny8_probe_malformed(const Igny8HttpResponse *resp,
								  const char *provider,
								  Igny8ProbeResult *out);
extern void igny8_probe_models(const char *const *models, int nmodels,
							   const char *const *listed, int nlisted,
							   int models_listed, Igny8ProbeResult *out);
extern void igny8_probe_model_list(const Igny8HttpResponse *resp,
								   const char *const *models, int nmodels,
								   const char *provider,
								   const char *list_key,
								   const char *const *name_keys,
								   int nname_keys,
								   Igny8ProbeResult *out);
extern void igny8_probe_finish(Igny8ProbeResult *out, bool healthy,
							   bool degraded, const char *summary,
							   cJSON *detail);

/* provider_ollama.c, provider_openai.c, provider_anthropic.c */
extern const Igny8TextProtocol igny8_ollama_protocol;
extern const Igny8TextProtocol igny8_openai_protocol;
extern const Igny8TextProtocol igny8_anthropic_protocol;

/* the health probes, in provider_{ollama,openai,anthropic,comfyui}.c */
extern const Igny8ProbeProtocol igny8_ollama_probe;
extern const Igny8ProbeProtocol igny8_openai_probe;
extern const Igny8ProbeProtocol igny8_anthropic_probe;
extern const Igny8ProbeProtocol igny8_comfyui_probe;

#endif							/* IGNY8_PROVIDER_H */
