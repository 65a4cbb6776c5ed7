/*
 * fs/engine_watch.c - the hang watch of the engine supervisor.
 *
 * Every thread that is inside the backend owns a slot holding a deadline
 * (milliseconds on the monotonic clock; 0 = idle, INT64_MAX = no limit).
 * The watchdog thread scans the slots four times a second; when one is
 * overdue it declares the engine lost, SIGKILLs the engine's process group
 * and writes to /sys/fs/fuse/connections/<minor>/abort, which fails every
 * request stuck in the dead connection, so no proxy thread stays blocked
 * for good.  It fires once per engine process (killed_pid).
 *
 * One engine per process: the slots are indexed by a thread-local, and a
 * thread gives its slot back when it exits (libfuse and our pools create
 * and retire threads).  Slots are atomics, read without any lock.
 */
#include "config.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "fs/engine_int.h"

static __thread int my_slot = -1;
static atomic_bool slot_used[FS_ENGINE_MAX_SLOTS];
static pthread_key_t slot_key;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;

static void slot_release(void *p)
{
	atomic_store(&slot_used[(intptr_t)p - 1], false);
}

static void slot_key_init(void)
{
	pthread_key_create(&slot_key, slot_release);
}

static int64_t now_ms(void)
{
	return (int64_t)(fs_engine_now() * 1000);
}

void fs_engine_slot_begin(struct fs_engine *e, double timeout)
{
	if (my_slot < 0) {
		pthread_once(&slot_once, slot_key_init);
		for (int i = 0; i < FS_ENGINE_MAX_SLOTS; i++) {
			bool free_slot = false;

			if (atomic_compare_exchange_strong(&slot_used[i], &free_slot, true)) {
				my_slot = i;
				atomic_store(&e->slots[i], 0);
				pthread_setspecific(slot_key, (void *)(intptr_t)(i + 1));
				break;
			}
		}
		if (my_slot < 0)
			return;         /* untracked; the others still are */
	}
	atomic_store(&e->slots[my_slot],
		     timeout > 0 ? now_ms() + (int64_t)(timeout * 1000) : INT64_MAX);
}

void fs_engine_slot_end(struct fs_engine *e)
{
	if (my_slot >= 0)
		atomic_store(&e->slots[my_slot], 0);
}

void fs_engine_watch_begin(struct fs_engine *e)
{
	fs_engine_slot_begin(e, e->o->hang_timeout);
}

void fs_engine_watch_end(struct fs_engine *e)
{
	fs_engine_slot_end(e);
}

int64_t fs_engine_overdue(const atomic_int_fast64_t *slots, size_t n,
			  int64_t now)
{
	int64_t worst = 0;

	for (size_t i = 0; i < n; i++) {
		int64_t d = atomic_load(&slots[i]);

		if (d && d < now && now - d > worst)
			worst = now - d;
	}
	return worst;
}

void *fs_engine_watchdog_main(void *arg)
{
	struct fs_engine *e = arg;

	for (;;) {
		int64_t worst;
		int conn;
		pid_t pid;

		usleep(250000);
		worst = fs_engine_overdue(e->slots, FS_ENGINE_MAX_SLOTS, now_ms());
		pthread_mutex_lock(&e->lock);
		if (e->shutdown) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		if (!worst || !e->pid || e->killed_pid == e->pid) {
			pthread_mutex_unlock(&e->lock);
			continue;
		}
		e->killed_pid = e->pid;
		e->hang_kills++;
		pid = e->pid;
		conn = e->conn;
		{
			char why[128];

			snprintf(why, sizeof(why), "engine hung: a backend call was stuck past hang_timeout (%g s)",
				 e->o->hang_timeout);
			fs_engine_log_locked(e, FS_LOG_ERR, "%s, killing pid %d", why, (int)pid);
			/* lost since the stuck call went in, not since we noticed:
			 * recovery_timeout counts from there */
			if (e->state == FS_ENGINE_RUNNING)
				fs_engine_declare_lost_locked(e, e->gen, why,
							      fs_engine_now() - worst / 1000.0 -
							      e->o->hang_timeout);
			else
				fs_engine_set_error_locked(e, "%s", why);
		}
		fs_engine_unlock(e);
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		fs_engine_abort_conn(conn);
	}
	return NULL;
}
