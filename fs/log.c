/*
 * fs/log.c - logging for the proxy and its tools.
 *
 * Messages are lowercase, error first, no trailing period.  Secrets never
 * reach this file: callers pass masked strings (fs_mask_secret).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_stderr = FS_LOG_DEBUG;   /* protected by log_lock: max level */
static bool log_syslog;                 /* protected by log_lock */
static bool log_debug;                  /* protected by log_lock */
static int log_fd = -1;                 /* protected by log_lock */

int fs_log_init(int stderr_max, bool to_syslog, const char *path, bool debug)
{
	int fd = -1;

	if (path) {
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
	}
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	log_stderr = stderr_max;
	log_debug = debug;
	if (to_syslog && !log_syslog)
		openlog("lazarusfs", LOG_PID, LOG_DAEMON);
	log_syslog = to_syslog;
	pthread_mutex_unlock(&log_lock);
	return 0;
}

void fs_log_release(void)
{
	pthread_mutex_lock(&log_lock);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = -1;
	if (log_syslog)
		closelog();
	log_syslog = false;
	pthread_mutex_unlock(&log_lock);
}

void fs_log(enum fs_log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char msg[1024], line[1200], stamp[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int saved = errno, n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	n = snprintf(line, sizeof(line), "%s.%03ld lazarusfs[%d] %s: %s\n",
		     stamp, ts.tv_nsec / 1000000, (int)getpid(), names[level], msg);
	if (n < 0)
		goto out;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;

	pthread_mutex_lock(&log_lock);
	if (level == FS_LOG_DEBUG && !log_debug) {
		pthread_mutex_unlock(&log_lock);
		goto out;
	}
	if ((int)level <= log_stderr)
		(void)!write(STDERR_FILENO, line, n);
	if (log_fd >= 0)
		(void)!write(log_fd, line, n);
	if (log_syslog)
		syslog(prio[level], "%s: %s", names[level], msg);
	pthread_mutex_unlock(&log_lock);
out:
	errno = saved;
}

void fs_mask_secret(const char *src, char *dst, size_t dstlen)
{
	const char *scheme, *at, *colon, *end;
	size_t n;

	if (!dstlen)
		return;
	scheme = strstr(src, "://");
	if (!scheme) {
		snprintf(dst, dstlen, "%s", src);
		return;
	}
	/* userinfo ends at the last '@' before the first '/' of the path */
	end = strchr(scheme + 3, '/');
	if (!end)
		end = src + strlen(src);
	at = NULL;
	for (const char *p = scheme + 3; p < end; p++)
		if (*p == '@')
			at = p;
	colon = at ? memchr(scheme + 3, ':', at - (scheme + 3)) : NULL;
	if (!colon) {
		snprintf(dst, dstlen, "%s", src);
		return;
	}
	n = colon + 1 - src;
	snprintf(dst, dstlen, "%.*s****%s", (int)n, src, at);
}
