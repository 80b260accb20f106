/*
 * teec_sim.c: a libteec-compatible client library for the host TEE simulator.
 *
 * Each TEEC_OpenSession starts the TA's host build (<dir>/<uuid>.sim) as its own process and talks to
 * it over a socketpair and a shared area (tee_sim_protocol.h): a request whose parameters fit in the
 * area is copied there and handed over with a futex, a larger one goes over the socket. Temporary
 * memrefs and registered shared memory are both sent as copies, so the TA never sees client memory
 * (and the TA host copies them again out of the area before the TA runs). Every wait for the TA is
 * bounded: a TA process that dies (crash, stack overflow, TEE_Panic) or does not answer within the
 * timeout is reaped and the call answers TEEC_ERROR_TARGET_DEAD; the session stays dead afterwards, as
 * in OP-TEE.
 *
 * $MIRRORNET_TEE_SIM_AREA_BYTES sets the size of each session's shared area (default 1 MiB, rounded up
 * to whole pages; 0: no area, every request over the socket).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tee_client_api.h>

#include "tee_sim_protocol.h"

extern char **environ;

#define DEFAULT_TIMEOUT_MS 60000
#define DEFAULT_AREA_BYTES (1u << 20)
#define MAX_AREA_BYTES (1u << 30)
/* Longest sleep on the area's futex before looking whether the TA process is still there. */
#define AREA_SLICE_MS 50

struct sim_context {
	char ta_dir[PATH_MAX];
	int timeout_ms;
	size_t area_bytes; /* 0: no shared area */
};

struct sim_session {
	struct sim_context *ctx;
	pid_t pid;
	int cpu; /* the CPU the TA process is pinned to (-1: not pinned) */
	int fd;
	int dead;
	struct tee_sim_area_head *map; /* the shared area, mapped (offered to the TA, or in use) */
	size_t map_len;
	int in_use;                    /* the TA accepted the area */
	uint8_t *data;                 /* the area's data bytes */
	size_t cap;                    /* how many */
};

/* ---- last error (per thread) ----------------------------------------------------------------- */
static __thread char last_error[512];

const char *mirrornet_teec_sim_last_error(void)
{
	return last_error;
}

static void set_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
}

/* ---- time and I/O with a deadline ----------------------------------------------------------- */
static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 0 on success, -1 on EOF/error (peer gone), -2 on timeout. */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		long long left = deadline - now_ms();
		int r;

		if (left <= 0)
			return -2;
		r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return -2;
		return 0;
	}
}

static int recv_full(int fd, void *buf, size_t n, long long deadline)
{
	uint8_t *p = buf;

	while (n) {
		/* Try first, wait only when nothing is there yet. */
		ssize_t r = recv(fd, p, n, MSG_DONTWAIT);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int w = wait_fd(fd, POLLIN, deadline);

			if (w)
				return w;
			continue;
		}
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int send_iov(int fd, struct iovec *iov, int iovcnt, long long deadline)
{
	while (iovcnt > 0) {
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)iovcnt };
		ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int w = wait_fd(fd, POLLOUT, deadline);

			if (w)
				return w;
			continue;
		}
		if (r < 0)
			return -1;
		while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* ---- the shared area ------------------------------------------------------------------------------ */
/* A sealed memfd (it can neither shrink under the TA host nor grow), mapped here; its descriptor is
 * returned for the TA process (close-on-exec here, dup2'ed into the child). -1 when it cannot be made:
 * the session then keeps to the socket. */
static int make_area(struct sim_session *s, size_t bytes)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t len = (bytes + page - 1) / page * page;
	void *map;
	int fd;

	fd = memfd_create("mirrornet-tee-sim-area", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)len) != 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
		close(fd);
		return -1;
	}
	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		close(fd);
		return -1;
	}
	s->map = map;
	s->map_len = len;
	s->map->magic = TEE_SIM_AREA_MAGIC;
	s->data = (uint8_t *)map + sizeof(struct tee_sim_area_head);
	s->cap = len - sizeof(struct tee_sim_area_head);
	return fd;
}

static void drop_area(struct sim_session *s)
{
	if (s->map)
		munmap(s->map, s->map_len);
	s->map = NULL;
	s->in_use = 0;
	s->data = NULL;
	s->cap = 0;
}

/* 1 when the TA process's end of the socket is closed (it exited) or says something out of turn. */
static int peer_gone(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, 0) != 0;
}

/* Wait for the TA's reply in the area: 0, -1 (the TA process is gone), -2 (timeout). */
static int wait_reply(struct sim_session *s, long long deadline)
{
	for (;;) {
		uint32_t v = tee_sim_area_state(s->map);
		long long left;

		if (v == TEE_SIM_AREA_REPLY)
			return 0;
		if (v != TEE_SIM_AREA_REQUEST)
			return -1; /* DEAD: the TA process crashed */
		left = deadline - now_ms();
		if (left <= 0)
			return -2;
		if (tee_sim_area_wait(s->map, v, left < AREA_SLICE_MS ? (int)left : AREA_SLICE_MS) &&
		    peer_gone(s->fd))
			return -1;
	}
}

/* ---- TA process life cycle --------------------------------------------------------------------- */
static void describe_exit(int status, char *out, size_t cap)
{
	if (WIFSIGNALED(status))
		snprintf(out, cap, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 101)
		snprintf(out, cap, "panicked (TEE_Panic)");
	else if (WIFEXITED(status))
		snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
	else
		snprintf(out, cap, "ended");
}

/* Reap the TA process: wait up to grace_ms for it to end by itself, then SIGKILL it. */
static void reap(struct sim_session *s, int grace_ms, char *why, size_t cap)
{
	long long deadline = now_ms() + grace_ms;
	int status = 0;
	pid_t r;

	if (s->pid <= 0)
		return;
	for (;;) {
		r = waitpid(s->pid, &status, WNOHANG);
		if (r == s->pid || (r < 0 && errno != EINTR))
			break;
		if (now_ms() >= deadline) {
			kill(s->pid, SIGKILL);
			r = waitpid(s->pid, &status, 0);
			break;
		}
		usleep(1000);
	}
	if (why) {
		if (r == s->pid)
			describe_exit(status, why, cap);
		else
			snprintf(why, cap, "could not be waited for");
	}
	s->pid = -1;
}

static TEEC_Result kill_session(struct sim_session *s, int io_status, uint32_t *origin)
{
	char why[160];

	if (io_status == -2) {
		kill(s->pid, SIGKILL);
		reap(s, 1000, why, sizeof(why));
		set_error("the TA did not answer within %d ms and was killed", s->ctx->timeout_ms);
		if (origin)
			*origin = TEEC_ORIGIN_COMMS;
	} else {
		reap(s, 2000, why, sizeof(why));
		set_error("the TA process %s", why);
		if (origin)
			*origin = TEEC_ORIGIN_TEE;
	}
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	drop_area(s);
	s->dead = 1;
	return TEEC_ERROR_TARGET_DEAD;
}

/* ---- operations -------------------------------------------------------------------------------- */
struct resolved {
	uint32_t types;                    /* TA-side types */
	struct tee_sim_param wire[4];
	void *buf[4];                      /* client memory for each memref (NULL if none) */
	size_t size[4];
};

/* Resolve TEEC parameter types (temp, whole, partial) into TA-side memrefs and values. */
static TEEC_Result resolve(const TEEC_Operation *op, struct resolved *r)
{
	int i;

	memset(r, 0, sizeof(*r));
	if (!op)
		return TEEC_SUCCESS;
	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(op->paramTypes, i);
		const TEEC_Parameter *p = &op->params[i];
		uint32_t ta_type;
		void *buf = NULL;
		size_t size = 0;

		switch (t) {
		case TEEC_NONE:
			continue;
		case TEEC_VALUE_INPUT:
		case TEEC_VALUE_OUTPUT:
		case TEEC_VALUE_INOUT:
			r->types |= t << (4 * i);
			r->wire[i].a_or_size = p->value.a;
			r->wire[i].b = p->value.b;
			continue;
		case TEEC_MEMREF_TEMP_INPUT:
		case TEEC_MEMREF_TEMP_OUTPUT:
		case TEEC_MEMREF_TEMP_INOUT:
			ta_type = t;
			buf = p->tmpref.buffer;
			size = p->tmpref.size;
			break;
		case TEEC_MEMREF_WHOLE:
			if (!p->memref.parent) {
				set_error("parameter %d: MEMREF_WHOLE without a shared memory block", i);
				return TEEC_ERROR_BAD_PARAMETERS;
			}
			switch (p->memref.parent->flags & (TEEC_MEM_INPUT | TEEC_MEM_OUTPUT)) {
			case TEEC_MEM_INPUT:
				ta_type = 5;
				break;
			case TEEC_MEM_OUTPUT:
				ta_type = 6;
				break;
			case TEEC_MEM_INPUT | TEEC_MEM_OUTPUT:
				ta_type = 7;
				break;
			default:
				set_error("parameter %d: shared memory has neither INPUT nor OUTPUT flag", i);
				return TEEC_ERROR_BAD_PARAMETERS;
			}
			buf = p->memref.parent->buffer;
			size = p->memref.parent->size;
			break;
		case TEEC_MEMREF_PARTIAL_INPUT:
		case TEEC_MEMREF_PARTIAL_OUTPUT:
		case TEEC_MEMREF_PARTIAL_INOUT: {
			const TEEC_SharedMemory *shm = p->memref.parent;
			uint32_t need = (t == TEEC_MEMREF_PARTIAL_INPUT ? TEEC_MEM_INPUT :
					 t == TEEC_MEMREF_PARTIAL_OUTPUT ? TEEC_MEM_OUTPUT :
					 TEEC_MEM_INPUT | TEEC_MEM_OUTPUT);

			if (!shm || (shm->flags & need) != need) {
				set_error("parameter %d: partial memref without a shared memory block "
					  "of matching direction", i);
				return TEEC_ERROR_BAD_PARAMETERS;
			}
			if (p->memref.offset > shm->size ||
			    p->memref.size > shm->size - p->memref.offset) {
				set_error("parameter %d: offset %zu + size %zu exceeds the shared memory "
					  "block (%zu bytes)", i, p->memref.offset, p->memref.size,
					  shm->size);
				return TEEC_ERROR_BAD_PARAMETERS;
			}
			ta_type = t - 8; /* PARTIAL_INPUT 0xD -> MEMREF_INPUT 5, ... */
			buf = (uint8_t *)shm->buffer + p->memref.offset;
			size = p->memref.size;
			break;
		}
		default:
			set_error("parameter %d: unknown parameter type 0x%x", i, t);
			return TEEC_ERROR_BAD_PARAMETERS;
		}
		if (size > TEE_SIM_MAX_MEMREF) {
			set_error("parameter %d: %zu bytes exceeds the simulator's %u-byte memref limit",
				  i, size, TEE_SIM_MAX_MEMREF);
			return TEEC_ERROR_EXCESS_DATA;
		}
		r->types |= ta_type << (4 * i);
		r->wire[i].a_or_size = size;
		r->wire[i].flags = buf ? 0 : TEE_SIM_PARAM_NULL;
		r->buf[i] = buf;
		r->size[i] = size;
	}
	return TEEC_SUCCESS;
}

/* Write the TA's answers back into the operation (sizes of memrefs, values). */
static void write_back(TEEC_Operation *op, const struct tee_sim_reply *rep)
{
	int i;

	if (!op)
		return;
	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(op->paramTypes, i);
		TEEC_Parameter *p = &op->params[i];

		switch (t) {
		case TEEC_VALUE_OUTPUT:
		case TEEC_VALUE_INOUT:
			p->value.a = (uint32_t)rep->params[i].a_or_size;
			p->value.b = rep->params[i].b;
			break;
		case TEEC_MEMREF_TEMP_OUTPUT:
		case TEEC_MEMREF_TEMP_INOUT:
			p->tmpref.size = (size_t)rep->params[i].a_or_size;
			break;
		case TEEC_MEMREF_WHOLE:
		case TEEC_MEMREF_PARTIAL_OUTPUT:
		case TEEC_MEMREF_PARTIAL_INOUT:
			if (t != TEEC_MEMREF_WHOLE || (p->memref.parent->flags & TEEC_MEM_OUTPUT))
				p->memref.size = (size_t)rep->params[i].a_or_size;
			break;
		default:
			break;
		}
	}
}

/* One request/reply round trip with the TA process. */
/*
 * A real TEE runs the TA on the caller's core: the SMC switches worlds there, and no other core is woken.
 * Two processes on different cores instead pay a cross-core wake-up per message, which on a virtual
 * machine with an idle vCPU costs about 0.1 ms. So the TA process follows the caller: before each
 * request it is pinned to the CPU the caller runs on (one syscall, only when that CPU changes), and
 * both wake-ups stay on one core. MIRRORNET_SIM_PIN=0 turns this off.
 */
static void follow_caller(struct sim_session *s)
{
	static int enabled = -1;
	cpu_set_t set;
	int cpu;

	if (enabled < 0) {
		const char *v = getenv("MIRRORNET_SIM_PIN");

		enabled = !(v && v[0] == '0');
	}
	if (!enabled || s->pid <= 0)
		return;
	cpu = sched_getcpu();
	if (cpu < 0 || cpu == s->cpu)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(s->pid, sizeof(set), &set) == 0)
		s->cpu = cpu;
}

/* Bytes of memref data a request carries in (out = 0) or its reply may carry out (out = 1). */
static size_t memref_bytes(const struct resolved *r, int out)
{
	size_t n = 0;
	int i;

	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(r->types, i);

		if (tee_sim_is_memref(t) && (out ? tee_sim_carries_out(t) : tee_sim_carries_in(t)) &&
		    r->buf[i])
			n += r->size[i];
	}
	return n;
}

/* The round trip through the shared area: 0, -1 (TA gone or broken), -2 (timeout). */
static int area_round_trip(struct sim_session *s, const struct tee_sim_request *req,
			   const struct resolved *r, struct tee_sim_reply *rep, long long deadline)
{
	uint8_t *p = s->data;
	int i, io;

	memcpy(p, req, sizeof(*req));
	p += sizeof(*req);
	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(r->types, i);

		if (tee_sim_is_memref(t) && tee_sim_carries_in(t) && r->buf[i] && r->size[i]) {
			memcpy(p, r->buf[i], r->size[i]);
			p += r->size[i];
		}
	}
	tee_sim_area_post(s->map, TEE_SIM_AREA_REQUEST);
	io = wait_reply(s, deadline);
	if (io)
		return io;
	memcpy(rep, s->data, sizeof(*rep));
	if (rep->magic != TEE_SIM_MAGIC)
		return -1;
	p = s->data + sizeof(*rep);
	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(r->types, i);
		size_t got;

		if (!tee_sim_is_memref(t) || !tee_sim_carries_out(t) || !r->buf[i])
			continue;
		/* Within the area: the sizes of the request's output memrefs fit in it. */
		got = rep->params[i].a_or_size < r->size[i] ? (size_t)rep->params[i].a_or_size : r->size[i];
		memcpy(r->buf[i], p, got);
		p += got;
	}
	return 0;
}

static TEEC_Result round_trip(struct sim_session *s, uint32_t kind, uint32_t cmd,
			      TEEC_Operation *op, uint32_t *origin)
{
	struct tee_sim_request req;
	struct tee_sim_reply rep;
	struct resolved r;
	struct iovec iov[5];
	long long deadline;
	TEEC_Result res;
	int i, n = 0, io;

	if (origin)
		*origin = TEEC_ORIGIN_API;
	res = resolve(op, &r);
	if (res != TEEC_SUCCESS)
		return res;
	if (op)
		op->started = 1;

	memset(&req, 0, sizeof(req));
	req.magic = TEE_SIM_MAGIC;
	req.version = TEE_SIM_VERSION;
	req.kind = kind;
	req.cmd = cmd;
	req.param_types = r.types;
	if (kind == TEE_SIM_OPEN_SESSION && s->map)
		req.reserved = TEE_SIM_OFFER_AREA;
	memcpy(req.params, r.wire, sizeof(req.params));

	follow_caller(s);
	deadline = now_ms() + s->ctx->timeout_ms;
	if (s->in_use) {
		if (sizeof(req) + memref_bytes(&r, 0) <= s->cap &&
		    sizeof(rep) + memref_bytes(&r, 1) <= s->cap) {
			io = area_round_trip(s, &req, &r, &rep, deadline);
			if (io)
				return kill_session(s, io, origin);
			goto answered;
		}
		/* Too large for the area: ring, then send it over the socket. */
		tee_sim_area_post(s->map, TEE_SIM_AREA_SOCKET);
	}

	iov[n].iov_base = &req;
	iov[n++].iov_len = sizeof(req);
	for (i = 0; i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(r.types, i);

		if (tee_sim_is_memref(t) && tee_sim_carries_in(t) && r.buf[i] && r.size[i]) {
			iov[n].iov_base = r.buf[i];
			iov[n++].iov_len = r.size[i];
		}
	}

	io = send_iov(s->fd, iov, n, deadline);
	if (!io)
		io = recv_full(s->fd, &rep, sizeof(rep), deadline);
	if (!io && rep.magic != TEE_SIM_MAGIC)
		io = -1;
	for (i = 0; !io && i < 4; i++) {
		uint32_t t = TEEC_PARAM_TYPE_GET(r.types, i);
		size_t got;

		if (!tee_sim_is_memref(t) || !tee_sim_carries_out(t) || !r.buf[i])
			continue;
		got = rep.params[i].a_or_size < r.size[i] ? (size_t)rep.params[i].a_or_size : r.size[i];
		io = recv_full(s->fd, r.buf[i], got, deadline);
	}
	if (io)
		return kill_session(s, io, origin);
	if (kind == TEE_SIM_OPEN_SESSION && s->map) {
		if (rep.reserved == TEE_SIM_ACCEPT_AREA)
			s->in_use = 1;
		else
			drop_area(s); /* a TA host that does not know the area: the socket it is */
	}

answered:
	write_back(op, &rep);
	if (origin)
		*origin = rep.origin;
	if (rep.result != TEEC_SUCCESS)
		set_error("the TA answered 0x%08x", rep.result);
	return rep.result;
}

/* ---- the GP Client API -------------------------------------------------------------------------- */
TEEC_Result TEEC_InitializeContext(const char *name, TEEC_Context *context)
{
	struct sim_context *c;
	const char *dir = name ? name : getenv("MIRRORNET_TA_DIR");
	const char *tmo = getenv("MIRRORNET_TEE_SIM_TIMEOUT_MS");
	const char *area = getenv("MIRRORNET_TEE_SIM_AREA_BYTES");
	struct stat st;

	last_error[0] = '\0';
	if (!context) {
		set_error("TEEC_InitializeContext: context is NULL");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	context->imp.sim = NULL;
	if (!dir || !*dir)
		dir = ".";
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		set_error("TA folder %s does not exist", dir);
		return TEEC_ERROR_ITEM_NOT_FOUND;
	}
	if (strlen(dir) >= sizeof(c->ta_dir)) {
		set_error("TA folder name is too long");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		set_error("out of memory");
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	strcpy(c->ta_dir, dir);
	c->timeout_ms = DEFAULT_TIMEOUT_MS;
	if (tmo && *tmo) {
		char *end;
		long v = strtol(tmo, &end, 10);

		if (*end || v <= 0 || v > INT_MAX) {
			free(c);
			set_error("MIRRORNET_TEE_SIM_TIMEOUT_MS=%s is not a positive number of ms", tmo);
			return TEEC_ERROR_BAD_PARAMETERS;
		}
		c->timeout_ms = (int)v;
	}
	c->area_bytes = DEFAULT_AREA_BYTES;
	if (area && *area) {
		char *end;
		long long v = strtoll(area, &end, 10);

		if (*end || v < 0 || v > MAX_AREA_BYTES) {
			free(c);
			set_error("MIRRORNET_TEE_SIM_AREA_BYTES=%s is not a number of bytes from 0 (no shared "
				  "area) to %u", area, MAX_AREA_BYTES);
			return TEEC_ERROR_BAD_PARAMETERS;
		}
		c->area_bytes = (size_t)v;
	}
	context->imp.sim = c;
	return TEEC_SUCCESS;
}

TEEC_Result mirrornet_teec_sim_set_timeout(TEEC_Context *context, int timeout_ms)
{
	struct sim_context *c = context ? context->imp.sim : NULL;

	if (!c || timeout_ms <= 0) {
		set_error("mirrornet_teec_sim_set_timeout: no context or a timeout <= 0");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	c->timeout_ms = timeout_ms;
	return TEEC_SUCCESS;
}

void TEEC_FinalizeContext(TEEC_Context *context)
{
	if (!context)
		return;
	free(context->imp.sim);
	context->imp.sim = NULL;
}

/* Start the TA process with the socket as fd 3 and, if area_fd >= 0, the area as TEE_SIM_AREA_FD. */
static int spawn_ta(const char *path, int child_fd, int area_fd, pid_t *pid)
{
	posix_spawn_file_actions_t fa;
	char fd_arg[16];
	char *argv[4];
	int rc, sock = -1, area = -1;

	/* Copies above the targets first: dup2(3, 3) would keep FD_CLOEXEC, and the first dup2 must not
	 * overwrite the source of the second. */
	sock = fcntl(child_fd, F_DUPFD_CLOEXEC, TEE_SIM_AREA_FD + 1);
	if (sock < 0)
		return errno;
	if (area_fd >= 0) {
		area = fcntl(area_fd, F_DUPFD_CLOEXEC, TEE_SIM_AREA_FD + 1);
		if (area < 0) {
			rc = errno;
			close(sock);
			return rc;
		}
	}
	snprintf(fd_arg, sizeof(fd_arg), "%d", 3);
	argv[0] = (char *)path;
	argv[1] = "--fd";
	argv[2] = fd_arg;
	argv[3] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sock, 3);
	if (area >= 0)
		posix_spawn_file_actions_adddup2(&fa, area, TEE_SIM_AREA_FD);
	rc = posix_spawn(pid, path, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(sock);
	if (area >= 0)
		close(area);
	return rc;
}

TEEC_Result TEEC_OpenSession(TEEC_Context *context, TEEC_Session *session,
			     const TEEC_UUID *uuid, uint32_t method, const void *data,
			     TEEC_Operation *op, uint32_t *origin)
{
	struct sim_context *c;
	struct sim_session *s;
	char path[PATH_MAX + 64];
	int sv[2], rc, area_fd = -1;
	TEEC_Result res;

	(void)data;
	last_error[0] = '\0';
	if (origin)
		*origin = TEEC_ORIGIN_API;
	if (!context || !context->imp.sim || !session || !uuid) {
		set_error("TEEC_OpenSession: NULL context, session or UUID");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	session->imp.sim = NULL;
	if (method != TEEC_LOGIN_PUBLIC) {
		set_error("the simulator supports TEEC_LOGIN_PUBLIC only");
		return TEEC_ERROR_NOT_SUPPORTED;
	}
	c = context->imp.sim;
	snprintf(path, sizeof(path),
		 "%s/%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x.sim", c->ta_dir,
		 uuid->timeLow, uuid->timeMid, uuid->timeHiAndVersion, uuid->clockSeqAndNode[0],
		 uuid->clockSeqAndNode[1], uuid->clockSeqAndNode[2], uuid->clockSeqAndNode[3],
		 uuid->clockSeqAndNode[4], uuid->clockSeqAndNode[5], uuid->clockSeqAndNode[6],
		 uuid->clockSeqAndNode[7]);
	if (access(path, X_OK) != 0) {
		set_error("no simulated TA %s (build it with `mirrornet package-ta`)", path);
		if (origin)
			*origin = TEEC_ORIGIN_TEE;
		return TEEC_ERROR_ITEM_NOT_FOUND;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		set_error("out of memory");
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	s->ctx = c;
	s->fd = -1;
	s->pid = -1;
	s->cpu = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		set_error("socketpair: %s", strerror(errno));
		free(s);
		return TEEC_ERROR_COMMUNICATION;
	}
	{
		int buf = 4 << 20; /* room for a whole invoke, so neither side blocks mid-message */

		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
		setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	}
	if (c->area_bytes)
		area_fd = make_area(s, c->area_bytes);
	rc = spawn_ta(path, sv[1], area_fd, &s->pid);
	close(sv[1]);
	if (area_fd >= 0)
		close(area_fd);
	if (rc != 0) {
		set_error("cannot start %s: %s", path, strerror(rc));
		close(sv[0]);
		drop_area(s);
		free(s);
		if (origin)
			*origin = TEEC_ORIGIN_COMMS;
		return TEEC_ERROR_COMMUNICATION;
	}
	s->fd = sv[0];

	res = round_trip(s, TEE_SIM_OPEN_SESSION, 0, op, origin);
	if (res != TEEC_SUCCESS) {
		if (!s->dead) {
			close(s->fd);
			reap(s, 2000, NULL, 0);
			drop_area(s);
		}
		free(s);
		return res;
	}
	session->imp.sim = s;
	return TEEC_SUCCESS;
}

void TEEC_CloseSession(TEEC_Session *session)
{
	struct sim_session *s;

	if (!session || !session->imp.sim)
		return;
	s = session->imp.sim;
	if (!s->dead) {
		uint32_t origin;

		if (round_trip(s, TEE_SIM_CLOSE_SESSION, 0, NULL, &origin) != TEEC_ERROR_TARGET_DEAD) {
			close(s->fd);
			reap(s, 2000, NULL, 0);
			drop_area(s);
		}
	}
	free(s);
	session->imp.sim = NULL;
}

TEEC_Result TEEC_InvokeCommand(TEEC_Session *session, uint32_t cmd, TEEC_Operation *op,
			       uint32_t *origin)
{
	struct sim_session *s;

	last_error[0] = '\0';
	if (origin)
		*origin = TEEC_ORIGIN_API;
	if (!session || !session->imp.sim) {
		set_error("TEEC_InvokeCommand: the session is not open");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	s = session->imp.sim;
	if (s->dead) {
		set_error("the TA of this session is dead; open a new session");
		if (origin)
			*origin = TEEC_ORIGIN_TEE;
		return TEEC_ERROR_TARGET_DEAD;
	}
	return round_trip(s, TEE_SIM_INVOKE, cmd, op, origin);
}

TEEC_Result TEEC_RegisterSharedMemory(TEEC_Context *context, TEEC_SharedMemory *shm)
{
	if (!context || !shm || (!shm->buffer && shm->size) ||
	    !(shm->flags & (TEEC_MEM_INPUT | TEEC_MEM_OUTPUT)) ||
	    (shm->flags & ~(TEEC_MEM_INPUT | TEEC_MEM_OUTPUT))) {
		set_error("TEEC_RegisterSharedMemory: bad context, buffer or flags");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	if (shm->size > TEEC_CONFIG_SHAREDMEM_MAX_SIZE) {
		set_error("shared memory of %zu bytes exceeds %u", shm->size,
			  TEEC_CONFIG_SHAREDMEM_MAX_SIZE);
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	shm->imp.allocated = 0;
	return TEEC_SUCCESS;
}

TEEC_Result TEEC_AllocateSharedMemory(TEEC_Context *context, TEEC_SharedMemory *shm)
{
	if (!context || !shm || !(shm->flags & (TEEC_MEM_INPUT | TEEC_MEM_OUTPUT)) ||
	    (shm->flags & ~(TEEC_MEM_INPUT | TEEC_MEM_OUTPUT))) {
		set_error("TEEC_AllocateSharedMemory: bad context or flags");
		return TEEC_ERROR_BAD_PARAMETERS;
	}
	if (shm->size > TEEC_CONFIG_SHAREDMEM_MAX_SIZE) {
		set_error("shared memory of %zu bytes exceeds %u", shm->size,
			  TEEC_CONFIG_SHAREDMEM_MAX_SIZE);
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	shm->buffer = calloc(1, shm->size ? shm->size : 1);
	if (!shm->buffer)
		return TEEC_ERROR_OUT_OF_MEMORY;
	shm->imp.allocated = 1;
	return TEEC_SUCCESS;
}

void TEEC_ReleaseSharedMemory(TEEC_SharedMemory *shm)
{
	if (!shm)
		return;
	if (shm->imp.allocated)
		free(shm->buffer);
	shm->buffer = NULL;
	shm->size = 0;
	shm->imp.allocated = 0;
}

void TEEC_RequestCancellation(TEEC_Operation *op)
{
	(void)op; /* the simulator's TA calls are not cancellable; GP allows ignoring the request */
}
