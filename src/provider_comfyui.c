/*-------------------------------------------------------------------------
 *
 * provider_comfyui.c
 *	  ComfyUI: the health probe, GET /system_stats.
 *
 * ComfyUI answers /system_stats with its version and, for each device,
 * the VRAM it has and has free (protocols.md 2.3), which makes a cheap
 * probe.  Configured checkpoint names are not checked here: that would
 * need /object_info or /models/checkpoints.  ComfyUI has no auth; a key,
 * when given, goes as a bearer header for a proxy in front of it.
 *
 * The image protocol (POST /prompt, GET /history/{id}, GET /view;
 * protocols.md 2.1-2.2) will live in this file too.
 *
 * src/provider_comfyui.c
 *
 *-------------------------------------------------------------------------
 */
#include "igny8_c.h"

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
	json = igny8_json_parse(resp->body, resp->body_len);
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
