/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  API key references: "env:NAME" (the server's environment), "file:/path"
 *	  (first line of a file the server can read) or, discouraged, the key
 *	  itself.  Keys are resolved in the worker only, kept in its local
 *	  memory, and scrubbed out of any text that leaves it (redact.c).  A
 *	  literal key is never shown as a reference: it is "(literal key)".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker.h"

#define IGNY8_MAX_KEY_FILE	8192

/* A key may not carry characters that would break or inject a header. */
static bool
key_is_clean(const char *key)
{
	for (const char *p = key; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

static char *
trim(char *s)
{
	char	   *end;

	while (*s && isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/*
 * The first line of a key file, or NULL with *error set.  The worker reads
 * it while it loads the configuration, so nothing here may block: a FIFO
 * (or a device) would hold the worker, and every call it serves, until a
 * writer came.  The file is opened without blocking and must be a regular
 * file; a symbolic link to one is fine (Kubernetes and systemd mount their
 * secrets so).  At most IGNY8_MAX_KEY_FILE bytes are read.
 */
static char *
read_key_file(const char *path, char **error)
{
	int			fd;
	struct stat st;
	char	   *buf;
	ssize_t		n;
	char	   *nl;

	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | PG_BINARY, 0);
	if (fd < 0)
	{
		*error = psprintf("could not open key file \"%s\": %m", path);
		return NULL;
	}
	if (fstat(fd, &st) != 0)
	{
		*error = psprintf("could not stat key file \"%s\": %m", path);
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode))
	{
		*error = psprintf("key file \"%s\" is not a regular file (%s)", path,
						  S_ISFIFO(st.st_mode) ? "a FIFO" :
						  S_ISDIR(st.st_mode) ? "a directory" :
						  S_ISSOCK(st.st_mode) ? "a socket" :
						  S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" :
						  "not a file");
		close(fd);
		return NULL;
	}
	buf = palloc(IGNY8_MAX_KEY_FILE + 1);
	n = read(fd, buf, IGNY8_MAX_KEY_FILE);
	if (n < 0)
	{
		/* before close(), which may change errno */
		*error = psprintf("could not read key file \"%s\": %m", path);
		close(fd);
		pfree(buf);
		return NULL;
	}
	close(fd);
	buf[n] = '\0';
	nl = strchr(buf, '\n');
	if (nl)
		*nl = '\0';
	return trim(buf);
}

/*
 * Resolve a key reference.  Returns the key (palloc'd), or NULL with *error
 * set to a message that names the reference but never the key.  A NULL or
 * empty reference resolves to NULL without error: no key configured.
 */
char *
igny8_resolve_key(const char *ref, char **error)
{
	char	   *key;

	*error = NULL;
	if (ref == NULL || ref[0] == '\0')
		return NULL;

	if (strncmp(ref, "env:", 4) == 0)
	{
		const char *val = getenv(ref + 4);

		if (val == NULL || val[0] == '\0')
		{
			*error = psprintf("environment variable \"%s\" is not set in the server's environment",
							  ref + 4);
			return NULL;
		}
		key = trim(pstrdup(val));
	}
	else if (strncmp(ref, "file:", 5) == 0)
	{
		key = read_key_file(ref + 5, error);
		if (key == NULL)
			return NULL;
	}
	else
		key = trim(pstrdup(ref));

	if (key[0] == '\0')
	{
		*error = pstrdup("the key is empty");
		return NULL;
	}
	if (!key_is_clean(key))
	{
		*error = pstrdup("the key has control characters");
		return NULL;
	}
	return key;
}

/*
 * A key reference as it may be shown: "env:NAME" and "file:/path" quoted,
 * a literal key as (literal key).
 */
const char *
igny8_key_ref_display(const char *ref)
{
	if (ref == NULL)
		return "(none)";
	if (strncmp(ref, "env:", 4) == 0 || strncmp(ref, "file:", 5) == 0)
		return psprintf("\"%s\"", ref);
	return "(literal key)";
}
