/*
 * ta_host.c: one TA instance of the host TEE simulator, as its own process (one per session).
 *
 *   <uuid>.sim --fd N
 *
 * The simulator's libteec starts this process for TEEC_OpenSession and talks to it over the socket N
 * and, when the client offers one in OPEN_SESSION, a shared area (fd TEE_SIM_AREA_FD) whose futex word
 * rings for each request (tee_sim_protocol.h). The process plays OP-TEE's part for one TA instance:
 *   - the TA's entry points run on a stack of exactly TA_STACK_SIZE bytes above a PROT_NONE guard
 *     page, so a stack overflow kills the instance (SIGSEGV, reported on stderr) as in OP-TEE;
 *   - TEE_Malloc (and malloc of TA code) is served from a pool of TA_DATA_SIZE bytes;
 *   - every memref is a private copy of the client's buffer placed so that its last byte touches a
 *     guard page: a TA that reads or writes past a size it was given crashes instead of silently
 *     reading other memory. Requests in the shared area are read once: the header is copied out
 *     before it is checked, the memrefs before the TA runs, so the client changing the area during
 *     a call changes nothing the TA sees.
 * A crash or TEE_Panic ends the process; the client library answers TEEC_ERROR_TARGET_DEAD. A client
 * that goes away (its end of the socket closes) ends it too: waiting on the area's futex, the process
 * looks at the socket every IDLE_SLICE_MS.
 *
 * With $MIRRORNET_TEE_SIM_STATS set to a file name, a session that closes writes the instance's
 * high-water marks and how its requests came there: "stack_peak=<bytes> heap_peak=<bytes>
 * stack_size=<bytes> heap_size=<bytes> area_requests=<n> socket_requests=<n>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <tee_internal_api.h>
#include <user_ta_header_defines.h>

#include "tee_sim_internal.h"
#include "tee_sim_protocol.h"
#include "tee_sim_switch.h"

#ifndef TA_STACK_SIZE
#error "user_ta_header_defines.h must define TA_STACK_SIZE"
#endif
#ifndef TA_DATA_SIZE
#error "user_ta_header_defines.h must define TA_DATA_SIZE"
#endif

static uint8_t ta_heap[TA_DATA_SIZE] __attribute__((aligned(16)));

#define STACK_FILL 0xa5

static size_t page_size;
static uint8_t *stack_guard;   /* the guard page below the TA stack */
static uint8_t *stack_base;    /* lowest usable byte of the TA stack */

/* The shared area, once accepted (NULL: every request comes over the socket). */
#define IDLE_SLICE_MS 200
static struct tee_sim_area_head *area;
static uint8_t *area_data;
static size_t area_cap;
static unsigned long long area_requests, socket_requests;

/* ---- running an entry point on the TA stack --------------------------------------------------- */
struct call {
	uint32_t kind;
	uint32_t cmd;
	uint32_t types;
	TEE_Param *params;
	void *session;
	TEE_Result result;
};

static struct tee_sim_stack host_stack, ta_stack;
static int ta_stack_started;
static struct call *current;

static void ta_dispatch(struct call *c)
{
	switch (c->kind) {
	case 0:
		c->result = TA_CreateEntryPoint();
		break;
	case TEE_SIM_OPEN_SESSION:
		c->result = TA_OpenSessionEntryPoint(c->types, c->params, &c->session);
		break;
	case TEE_SIM_INVOKE:
		c->result = TA_InvokeCommandEntryPoint(c->session, c->cmd, c->types, c->params);
		break;
	case TEE_SIM_CLOSE_SESSION:
		TA_CloseSessionEntryPoint(c->session);
		TA_DestroyEntryPoint();
		c->result = TEE_SUCCESS;
		break;
	}
}

/* The TA stack's one frame: serve the current call, switch back to the host, wait for the next. */
static void ta_loop(void)
{
	for (;;) {
		ta_dispatch(current);
		tee_sim_stack_switch(&ta_stack, &host_stack);
	}
}

static void run_on_ta_stack(struct call *c)
{
	current = c;
	if (!ta_stack_started) {
		if (tee_sim_stack_start(&ta_stack, stack_base, TA_STACK_SIZE, ta_loop) != 0) {
			tee_sim_log("cannot set up the TA stack, errno", NULL, (uint64_t)errno);
			_exit(102);
		}
		ta_stack_started = 1;
	}
	tee_sim_stack_switch(&host_stack, &ta_stack);
}

/* ---- crash reporting --------------------------------------------------------------------------- */
static void on_fault(int sig, siginfo_t *info, void *uc)
{
	uint8_t *addr = info->si_addr;

	(void)uc;
	if (addr >= stack_guard && addr < stack_guard + page_size)
		tee_sim_log("stack overflow: the TA used more than TA_STACK_SIZE bytes =", NULL,
			    TA_STACK_SIZE);
	else
		tee_sim_log(sig == SIGSEGV ? "crashed (SIGSEGV), bad address" :
			    sig == SIGBUS ? "crashed (SIGBUS), bad address" :
			    "crashed (SIGFPE/SIGILL), at", NULL, (uint64_t)(uintptr_t)addr);
	if (area)  /* tell a client waiting on the area now, not after its next slice */
		tee_sim_area_post(area, TEE_SIM_AREA_DEAD);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void setup_process(void)
{
	static uint8_t alt_stack[64 * 1024];
	struct sigaction sa;
	stack_t ss;
	size_t len;
	uint8_t *map;

	page_size = (size_t)sysconf(_SC_PAGESIZE);
	len = page_size + ((TA_STACK_SIZE + page_size - 1) & ~(page_size - 1));
	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED || mprotect(map, page_size, PROT_NONE) != 0) {
		tee_sim_log("cannot map the TA stack, errno", NULL, (uint64_t)errno);
		_exit(102);
	}
	stack_guard = map;
	stack_base = map + page_size;
	memset(stack_base, STACK_FILL, len - page_size); /* for the high-water mark */

	ss.ss_sp = alt_stack;
	ss.ss_size = sizeof(alt_stack);
	ss.ss_flags = 0;
	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGFPE, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	tee_sim_heap_init(ta_heap, sizeof(ta_heap));
}

/* Bytes of the TA stack ever used (the stack grows down from stack_base + TA_STACK_SIZE). */
static size_t stack_peak(void)
{
	size_t i = 0;

	while (i < TA_STACK_SIZE && stack_base[i] == STACK_FILL)
		i++;
	return TA_STACK_SIZE - i;
}

static void write_stats(void)
{
	const char *path = getenv("MIRRORNET_TEE_SIM_STATS");
	char line[256];
	int fd, n;

	if (!path || !*path)
		return;
	n = snprintf(line, sizeof(line),
		     "stack_peak=%zu heap_peak=%zu stack_size=%zu heap_size=%zu area_requests=%llu "
		     "socket_requests=%llu\n", stack_peak(), tee_sim_heap_peak(), (size_t)TA_STACK_SIZE,
		     (size_t)TA_DATA_SIZE, area_requests, socket_requests);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, (size_t)n) < 0) {
		/* statistics are best effort */
	}
	close(fd);
}

/* ---- socket I/O ---------------------------------------------------------------------------------- */
static int sock = -1;

static int read_full(void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t r = recv(sock, p, n, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_iov(struct iovec *iov, int n)
{
	while (n > 0) {
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t r = sendmsg(sock, &msg, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		while (n > 0 && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* ---- the shared area ------------------------------------------------------------------------------- */
/* Map the area the client offered: a memfd sealed against shrinking (so no access here can fault on a
 * truncated file). 0 on success; -1 leaves the session on the socket. */
static int accept_area(void)
{
	int fd = TEE_SIM_AREA_FD, seals = fcntl(fd, F_GET_SEALS);
	struct stat st;
	void *map;

	if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(fd, &st) != 0 ||
	    st.st_size < (off_t)(sizeof(struct tee_sim_area_head) + sizeof(struct tee_sim_request) +
				 sizeof(struct tee_sim_reply)))
		return -1;
	map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return -1;
	if (((struct tee_sim_area_head *)map)->magic != TEE_SIM_AREA_MAGIC) {
		munmap(map, (size_t)st.st_size);
		return -1;
	}
	close(fd);
	area = map;
	area_data = (uint8_t *)map + sizeof(struct tee_sim_area_head);
	area_cap = (size_t)st.st_size - sizeof(struct tee_sim_area_head);
	return 0;
}

/* The client closed its end of the socket (it exited, or closed the session's descriptor). */
static int client_left(void)
{
	struct pollfd pfd = { .fd = sock, .events = POLLIN };
	char b;

	if (poll(&pfd, 1, 0) <= 0)
		return 0;
	if (pfd.revents & (POLLHUP | POLLERR))
		return 1;
	return recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void client_gone(void);

/* Wait for the next request: TEE_SIM_AREA_REQUEST or TEE_SIM_AREA_SOCKET. */
static uint32_t wait_doorbell(void)
{
	for (;;) {
		uint32_t v = tee_sim_area_state(area);

		if (v == TEE_SIM_AREA_REQUEST || v == TEE_SIM_AREA_SOCKET)
			return v;
		if (tee_sim_area_wait(area, v, IDLE_SLICE_MS) && client_left())
			client_gone();
	}
}

/* ---- memrefs: private copies ending at a guard page ------------------------------------------- */
struct memref {
	uint8_t *map;
	size_t map_len;
	uint8_t *buf;
	size_t size;     /* size the client gave */
};

/* One mapping per parameter slot, kept while consecutive invokes need the same number of pages. */
static struct memref slots[4];

static int memref_alloc(int slot, size_t size, int zero)
{
	struct memref *m = &slots[slot];
	size_t data = (size + page_size - 1) & ~(page_size - 1);

	if (!m->map || m->map_len != data + page_size) {
		if (m->map)
			munmap(m->map, m->map_len);
		m->map_len = data + page_size;
		m->map = mmap(NULL, m->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m->map == MAP_FAILED) {
			m->map = NULL;
			return -1;
		}
		if (mprotect(m->map + data, page_size, PROT_NONE) != 0) {
			munmap(m->map, m->map_len);
			m->map = NULL;
			return -1;
		}
	}
	m->buf = m->map + data - size;
	m->size = size;
	if (zero && size)
		memset(m->buf, 0, size);
	return 0;
}

/* ---- serving one request ------------------------------------------------------------------------ */
static void *session_ctx;
static int session_open;
static TEE_Result create_result;

/* The memref bytes a request carries in (out = 0) or its reply may carry out (out = 1); -1 if a size is
 * beyond the simulator's limit. */
static long long memref_bytes(const struct tee_sim_request *req, int out)
{
	long long n = 0;
	int i;

	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(req->param_types, i);
		const struct tee_sim_param *p = &req->params[i];

		if (!tee_sim_is_memref(t) || (p->flags & TEE_SIM_PARAM_NULL) ||
		    !(out ? tee_sim_carries_out(t) : tee_sim_carries_in(t)))
			continue;
		if (p->a_or_size > TEE_SIM_MAX_MEMREF)
			return -1;
		n += (long long)p->a_or_size;
	}
	return n;
}

/* Serve one request (a private copy of its header), which came in the area (via_area) or over the
 * socket; the reply goes back the same way. Returns 0 to keep serving, 1 when the session is closed. */
static int serve(const struct tee_sim_request *req, int via_area)
{
	struct memref *mem[4] = { NULL, NULL, NULL, NULL };
	struct tee_sim_region regions[4];
	struct iovec iov[5];
	int niov = 0;
	struct tee_sim_reply rep;
	TEE_Param params[4];
	struct call c;
	int i, nregions = 0;
	uint32_t origin = TEE_ORIGIN_TRUSTED_APP;
	const uint8_t *in = via_area ? area_data + sizeof(*req) : NULL;

	if (via_area) {
		long long need_in = memref_bytes(req, 0), need_out = memref_bytes(req, 1);

		if (need_in < 0 || need_out < 0 || (size_t)need_in > area_cap - sizeof(*req) ||
		    (size_t)need_out > area_cap - sizeof(rep))
			goto bad_request;
	}
	memset(params, 0, sizeof(params));
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(req->param_types, i);
		const struct tee_sim_param *p = &req->params[i];

		if (tee_sim_is_memref(t)) {
			if (p->a_or_size > TEE_SIM_MAX_MEMREF)
				goto bad_request;
			if (p->flags & TEE_SIM_PARAM_NULL) {
				params[i].memref.buffer = NULL;
				params[i].memref.size = (size_t)p->a_or_size;
				continue;
			}
			if (memref_alloc(i, (size_t)p->a_or_size, !tee_sim_carries_in(t)) != 0)
				goto out_of_memory;
			mem[i] = &slots[i];
			if (tee_sim_carries_in(t) && via_area) {
				memcpy(mem[i]->buf, in, mem[i]->size);
				in += mem[i]->size;
			} else if (tee_sim_carries_in(t) && read_full(mem[i]->buf, mem[i]->size) != 0) {
				_exit(0); /* client gone */
			}
			params[i].memref.buffer = mem[i]->buf;
			params[i].memref.size = mem[i]->size;
			regions[nregions].start = mem[i]->buf;
			regions[nregions].size = mem[i]->size;
			regions[nregions].access = (t == TEE_PARAM_TYPE_MEMREF_INPUT ? 0 :
						    TEE_MEMORY_ACCESS_WRITE) | TEE_MEMORY_ACCESS_READ;
			nregions++;
		} else if (tee_sim_is_value(t)) {
			if (tee_sim_carries_in(t)) {
				params[i].value.a = (uint32_t)p->a_or_size;
				params[i].value.b = p->b;
			}
		} else if (t != TEE_PARAM_TYPE_NONE) {
			goto bad_request;
		}
	}

	memset(&c, 0, sizeof(c));
	c.kind = req->kind;
	c.cmd = req->cmd;
	c.types = req->param_types;
	c.params = params;
	c.session = session_ctx;
	if (req->kind == TEE_SIM_OPEN_SESSION && create_result != TEE_SUCCESS) {
		c.result = create_result;
		origin = TEE_ORIGIN_TRUSTED_APP;
	} else {
		tee_sim_set_shared_regions(regions, nregions);
		run_on_ta_stack(&c);
		tee_sim_set_shared_regions(NULL, 0);
	}
	memset(&rep, 0, sizeof(rep));
	if (req->kind == TEE_SIM_OPEN_SESSION && c.result == TEE_SUCCESS) {
		session_ctx = c.session;
		session_open = 1;
		/* From the next request on (this reply still goes over the socket). */
		if (req->reserved == TEE_SIM_OFFER_AREA && !area && accept_area() == 0)
			rep.reserved = TEE_SIM_ACCEPT_AREA;
	}

	rep.magic = TEE_SIM_MAGIC;
	rep.result = c.result;
	rep.origin = c.result == TEE_SUCCESS ? TEE_ORIGIN_TRUSTED_APP : origin;
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(req->param_types, i);

		if (tee_sim_is_memref(t)) {
			rep.params[i].a_or_size = params[i].memref.size;
		} else if (tee_sim_is_value(t) && tee_sim_carries_out(t)) {
			rep.params[i].a_or_size = params[i].value.a;
			rep.params[i].b = params[i].value.b;
		}
	}
	iov[niov].iov_base = &rep;
	iov[niov++].iov_len = sizeof(rep);
	for (i = 0; i < 4; i++) {
		uint32_t t = TEE_PARAM_TYPE_GET(req->param_types, i);
		size_t n;

		if (!tee_sim_is_memref(t) || !tee_sim_carries_out(t) || !mem[i])
			continue;
		n = params[i].memref.size < mem[i]->size ? params[i].memref.size : mem[i]->size;
		iov[niov].iov_base = mem[i]->buf;
		iov[niov++].iov_len = n;
	}
	if (via_area) {
		uint8_t *out = area_data;

		for (i = 0; i < niov; i++) { /* within the area: checked against the request's sizes above */
			memcpy(out, iov[i].iov_base, iov[i].iov_len);
			out += iov[i].iov_len;
		}
		tee_sim_area_post(area, TEE_SIM_AREA_REPLY);
	} else if (write_iov(iov, niov) != 0) {
		_exit(0);
	}
	return req->kind == TEE_SIM_CLOSE_SESSION;

bad_request:
	tee_sim_log("malformed request from the client library; types =", NULL, req->param_types);
	_exit(103);
out_of_memory:
	tee_sim_log("cannot map a memref of size", NULL, req->params[i].a_or_size);
	_exit(103);
}

/* The client went away without closing: tear the instance down quietly. */
static void client_gone(void)
{
	struct call c;

	if (session_open) {
		memset(&c, 0, sizeof(c));
		c.kind = TEE_SIM_CLOSE_SESSION;
		c.session = session_ctx;
		run_on_ta_stack(&c);
	}
	exit(0);
}

int main(int argc, char **argv)
{
	struct tee_sim_request req;
	struct call c;

	if (argc != 3 || strcmp(argv[1], "--fd") != 0) {
		static const char usage[] =
			"usage: <uuid>.sim --fd N\n"
			"A MirrorNet TA built for the host TEE simulator. It is started by the simulator's\n"
			"libteec (TEEC_OpenSession), not by hand.\n";
		if (write(STDERR_FILENO, usage, sizeof(usage) - 1) < 0)
			return 2;
		return 2;
	}
	sock = atoi(argv[2]);
	setup_process();

	memset(&c, 0, sizeof(c));
	c.kind = 0;
	run_on_ta_stack(&c);
	create_result = c.result;

	for (;;) {
		int via_area = 0;

		if (area && wait_doorbell() == TEE_SIM_AREA_REQUEST) {
			memcpy(&req, area_data, sizeof(req)); /* read once: checks and use see this copy */
			via_area = 1;
		} else {
			if (area) /* the request follows on the socket */
				tee_sim_area_post(area, TEE_SIM_AREA_IDLE);
			if (read_full(&req, sizeof(req)) != 0)
				client_gone();
		}
		if (req.magic != TEE_SIM_MAGIC || req.version != TEE_SIM_VERSION) {
			tee_sim_log("bad request header, magic", NULL, req.magic);
			return 103;
		}
		if ((req.kind == TEE_SIM_OPEN_SESSION) == session_open ||
		    (req.kind != TEE_SIM_OPEN_SESSION && req.kind != TEE_SIM_INVOKE &&
		     req.kind != TEE_SIM_CLOSE_SESSION)) {
			/* Only a broken client library does this; its stream cannot be trusted now. */
			tee_sim_log("request out of order, kind", NULL, req.kind);
			return 103;
		}
		if (via_area)
			area_requests++;
		else
			socket_requests++;
		if (serve(&req, via_area)) {
			write_stats();
			return 0;
		}
	}
}
