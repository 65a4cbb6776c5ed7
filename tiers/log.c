/* The log shim shared by tiers/ and cache/ (one sink for both). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdarg.h>
#include <stdio.h>

#include "tiers/tier_int.h"

static void (*tier_log_fn)(int level, const char *msg);

void tier_set_log(void (*fn)(int level, const char *msg))
{
	tier_log_fn = fn;
}

void tlog(int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (tier_log_fn)
		tier_log_fn(level, msg);
	else if (level <= 4)
		fprintf(stderr, "lazarusfs: %s\n", msg);
}
