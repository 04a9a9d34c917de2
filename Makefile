# igny8_ai: PGXS build.  The version lives in igny8_ai.control only.
EXTENSION = igny8_ai
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = igny8_ai
OBJS = \
	src/igny8_ai.o \
	src/price.o \
	src/gpuclock.o \
	src/shmem.o \
	src/places.o \
	src/dispatch.o \
	src/account.o \
	src/budget.o \
	src/submit.o \
	src/extension.o \
	src/worker.o \
	src/jobtable.o \
	src/job.o \
	src/probe.o \
	src/image.o \
	src/dispatch_image.o \
	src/dispatch_batch.o \
	src/router.o \
	src/http.o \
	src/http1.o \
	src/config.o \
	src/cache.o \
	src/encoding.o \
	src/usage.o \
	src/secrets.o \
	src/redact.o \
	src/health.o \
	src/status.o \
	src/provider.o \
	src/provider_ollama.o \
	src/provider_openai.o \
	src/provider_anthropic.o \
	src/provider_comfyui.o \
	src/provider_image.o
PGFILEDESC = "igny8_ai - AI dispatch inside PostgreSQL"

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

SHLIB_LINK = -lcurl -lcjson
PG_CPPFLAGS = -I$(srcdir)/src
# test/run builds with IGNY8_CHECKS=1: the workers check their job counts
# at every turn of their loop (src/worker.h)
ifdef IGNY8_CHECKS
PG_CPPFLAGS += -DIGNY8_CHECK_COUNTS
endif

# pg_regress against a temporary instance that preloads pg_cron and
# igny8_ai.  test/run writes REGRESS_CONF (simulator ports included).
REGRESS_CONF ?= test/tmp/regress.conf
REGRESS = install bad_input text chat fallback retry failures encoding queue cancel jobs \
	restart wakeup security config rename workflows usage health circuit image batch prices account_providers cache accounts budgets drop costs
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=$(REGRESS_CONF)

# the LLVM bitcode for JIT inlining is of no use here, and needs clang
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the headers (PGXS tracks no dependencies)
$(OBJS): $(wildcard src/*.h)
