/*
 * server.c - the gRPC transport: libgrpc's C core, unary calls only.
 *
 * The main thread owns the server completion queue. It keeps exactly one
 * grpc_server_request_call() outstanding; each new call gets a thread of its
 * own with a private pluck queue, so a slow mount never blocks other calls.
 * The call thread reads the request, hands the bytes to csi_handle() and sends
 * the reply and status. A signal thread turns SIGTERM/SIGINT into
 * grpc_server_shutdown_and_notify(); the main thread then waits for the
 * shutdown tag, for its last request to fail and for the call threads
 * (counted under srv->lock) before it destroys the server. Call threads are
 * joined, not detached: a thread that said it was done still runs its
 * thread-local destructors (OpenSSL's, after a node label call), and a
 * process that exits meanwhile leaves them half freed. start_call() joins the
 * ones that finished since the last call, csi_server_run() the rest.
 */
#include "config.h"

#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/csi-shim/csi.h"

/* A call thread that has finished and waits to be joined. */
struct done {
	struct done *next;
	pthread_t tid;
};

struct srv {
	struct csi *csi;
	grpc_server *server;
	grpc_completion_queue *cq;	/* notifications: new calls, shutdown */
	atomic_bool stop;		/* set by the signal thread */
	pthread_mutex_t lock;		/* leaf lock, protects calls and done */
	pthread_cond_t idle;
	int calls;			/* call threads running, protected by lock */
	struct done *done;		/* finished call threads, protected by lock */
};

struct call {
	struct srv *srv;
	grpc_completion_queue *cq;	/* this call's batches, pluck type */
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array md;
	struct done *done;		/* its entry for srv->done; NULL on the main thread */
};

static int shutdown_tag;

static struct call *call_new(struct srv *s)
{
	struct call *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->srv = s;
	c->cq = grpc_completion_queue_create_for_pluck(NULL);
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->md);
	return c;
}

static void call_free(struct call *c)
{
	if (c->call)
		grpc_call_unref(c->call);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->md);
	/* Every batch was plucked, so the queue is empty. */
	grpc_completion_queue_shutdown(c->cq);
	grpc_completion_queue_destroy(c->cq);
	free(c);
}

/* Runs one batch on the call and waits for it. */
static bool batch(struct call *c, const grpc_op *ops, size_t n)
{
	grpc_event ev;

	if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK)
		return false;
	ev = grpc_completion_queue_pluck(c->cq, c, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Reads the request message and runs it. */
static void handle(struct call *c, uint8_t **resp, size_t *resp_len, struct csi_status *st)
{
	grpc_byte_buffer *in = NULL;
	grpc_byte_buffer_reader reader;
	grpc_op op = { .op = GRPC_OP_RECV_MESSAGE };
	grpc_slice data;
	char *method;

	op.data.recv_message.recv_message = &in;
	if (!batch(c, &op, 1) || !in) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "no request message");
		goto out;
	}
	if (!grpc_byte_buffer_reader_init(&reader, in)) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "cannot decode request message");
		goto out;
	}
	data = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	method = grpc_slice_to_c_string(c->details.method);
	csi_handle(c->srv->csi, method, GRPC_SLICE_START_PTR(data), GRPC_SLICE_LENGTH(data), resp,
		   resp_len, st);
	gpr_free(method);
	grpc_slice_unref(data);
out:
	if (in)
		grpc_byte_buffer_destroy(in);
}

static void *call_main(void *arg)
{
	struct call *c = arg;
	struct srv *s = c->srv;
	struct csi_status st = { .code = CSI_OK };
	grpc_byte_buffer *out = NULL;
	grpc_slice details, msg;
	grpc_op ops[4];
	struct done *d;
	uint8_t *resp = NULL;
	size_t resp_len = 0, n = 0;
	int cancelled = 0;

	handle(c, &resp, &resp_len, &st);
	memset(ops, 0, sizeof(ops));
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (st.code == CSI_OK) {
		msg = grpc_slice_from_copied_buffer((const char *)resp, resp_len);
		out = grpc_raw_byte_buffer_create(&msg, 1);
		grpc_slice_unref(msg);
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = out;
	}
	details = grpc_slice_from_copied_string(st.msg);
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)st.code;
	ops[n++].data.send_status_from_server.status_details = &details;
	ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[n++].data.recv_close_on_server.cancelled = &cancelled;
	batch(c, ops, n);
	grpc_slice_unref(details);
	if (out)
		grpc_byte_buffer_destroy(out);
	free(resp);
	d = c->done;
	call_free(c);
	pthread_mutex_lock(&s->lock);
	s->calls--;
	if (d) {
		d->tid = pthread_self();
		d->next = s->done;
		s->done = d;
	}
	pthread_cond_signal(&s->idle);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Joins the call threads that have finished. */
static void join_done(struct srv *s)
{
	struct done *d, *next;

	pthread_mutex_lock(&s->lock);
	d = s->done;
	s->done = NULL;
	pthread_mutex_unlock(&s->lock);
	for (; d; d = next) {
		next = d->next;
		pthread_join(d->tid, NULL);
		free(d);
	}
}

static void start_call(struct srv *s, struct call *c)
{
	pthread_t tid;
	int err;

	join_done(s);
	pthread_mutex_lock(&s->lock);
	s->calls++;
	pthread_mutex_unlock(&s->lock);
	c->done = malloc(sizeof(*c->done));
	err = c->done ? pthread_create(&tid, NULL, call_main, c) : ENOMEM;
	if (err) {
		csi_log("cannot start a call thread: %s", strerror(err));
		free(c->done);
		c->done = NULL;
		/* Run it here rather than leave the client hanging. */
		call_main(c);
	}
}

static void *signal_main(void *arg)
{
	struct srv *s = arg;
	sigset_t set;
	int sig = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigwait(&set, &sig);
	csi_log("%s, shutting down", strsignal(sig));
	atomic_store(&s->stop, true);
	grpc_server_shutdown_and_notify(s->server, s->cq, &shutdown_tag);
	grpc_server_cancel_all_calls(s->server);
	return NULL;
}

/* Accepts unix:///path, unix:/path and /path. */
static const char *socket_path(const char *endpoint)
{
	if (!strncmp(endpoint, "unix://", 7))
		endpoint += 7;
	else if (!strncmp(endpoint, "unix:", 5))
		endpoint += 5;
	return endpoint[0] == '/' ? endpoint : NULL;
}

static int listen_on(struct srv *s, const char *path)
{
	grpc_server_credentials *creds;
	struct stat sb;
	char *addr;
	mode_t old;
	int port;

	/* A socket left by an earlier run would make the bind fail. */
	if (lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode))
		unlink(path);
	if (asprintf(&addr, "unix:%s", path) < 0)
		return -ENOMEM;
	/* Only root may talk to us: the socket is created 0600. */
	old = umask(0177);
	creds = grpc_insecure_server_credentials_create();
	port = grpc_server_add_http2_port(s->server, addr, creds);
	grpc_server_credentials_release(creds);
	free(addr);
	if (port) {
		grpc_server_start(s->server);
		if (chmod(path, 0600) < 0)
			port = 0;
	}
	umask(old);
	return port ? 0 : -EADDRNOTAVAIL;
}

/* Serves calls until the shutdown tag and the last request have come back. */
static void serve(struct srv *s, pthread_t sig_thread)
{
	bool pending = false, shut = false;
	struct call *c = NULL;
	grpc_event ev;

	for (;;) {
		if (!pending && !atomic_load(&s->stop)) {
			c = call_new(s);
			if (c && grpc_server_request_call(s->server, &c->call, &c->details, &c->md,
							  c->cq, s->cq, c) == GRPC_CALL_OK) {
				pending = true;
			} else {
				csi_log("cannot accept calls, shutting down");
				if (c)
					call_free(c);
				pthread_kill(sig_thread, SIGTERM);
				atomic_store(&s->stop, true);
			}
		}
		if (shut && !pending)
			return;
		ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		if (ev.tag == &shutdown_tag) {
			shut = true;
			continue;
		}
		pending = false;
		if (ev.success)
			start_call(s, ev.tag);
		else
			call_free(ev.tag);
	}
}

int csi_server_run(struct csi *csi, const char *endpoint)
{
	const char *path = socket_path(endpoint);
	struct srv s = { .csi = csi };
	pthread_t sig_thread;
	grpc_event ev;
	int err;

	if (!path) {
		csi_log("endpoint %s is not a unix socket (unix:///path)", endpoint);
		return -EINVAL;
	}
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.idle, NULL);
	grpc_init();
	s.server = grpc_server_create(NULL, NULL);
	s.cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s.server, s.cq, NULL);
	err = listen_on(&s, path);
	if (err) {
		csi_log("cannot listen on %s: %s", endpoint, strerror(-err));
		goto out_shutdown;
	}
	err = -pthread_create(&sig_thread, NULL, signal_main, &s);
	if (err) {
		csi_log("cannot start the signal thread: %s", strerror(-err));
		goto out_shutdown;
	}
	csi_log("serving %s on %s", csi->cfg.driver_name, endpoint);
	serve(&s, sig_thread);
	pthread_join(sig_thread, NULL);
	pthread_mutex_lock(&s.lock);
	while (s.calls)
		pthread_cond_wait(&s.idle, &s.lock);
	pthread_mutex_unlock(&s.lock);
	join_done(&s);
	goto out;
out_shutdown:
	grpc_server_shutdown_and_notify(s.server, s.cq, &shutdown_tag);
	do
		ev = grpc_completion_queue_next(s.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	while (ev.tag != &shutdown_tag);
out:
	unlink(path);
	grpc_server_destroy(s.server);
	grpc_completion_queue_shutdown(s.cq);
	while (grpc_completion_queue_next(s.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(s.cq);
	grpc_shutdown();
	pthread_cond_destroy(&s.idle);
	pthread_mutex_destroy(&s.lock);
	return err;
}
