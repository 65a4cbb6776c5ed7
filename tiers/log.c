/* The log shim shared by tiers/ and cache/ (tier.h): one sink for both. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdarg.h>
#include <stdio.h>

#include "tiers/tier.h"

static tier_log_fn *log_sink;   /* atomic: may be set while others log */

void tier_set_log(tier_log_fn *fn)
{
	__atomic_store_n(&log_sink, fn, __ATOMIC_RELEASE);
}

void tier_log(enum tier_log_level level, const char *fmt, ...)
{
	tier_log_fn *sink = __atomic_load_n(&log_sink, __ATOMIC_ACQUIRE);
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (sink)
		sink(level, msg);
	else if (level <= TIER_LOG_WARN)
		fprintf(stderr, "lazarusfs: %s\n", msg);
}
