/*
 * mirrornet_client: run the MirrorNet CPM trusted application on tapped feature maps, for boards
 * without Python. It speaks the GlobalPlatform TEE Client API, so it builds against OP-TEE's libteec
 * (aarch64-linux-gnu-gcc ... -lteec) or against the host simulator's library (CMake target).
 *
 *   mirrornet_client [--context NAME] --info
 *   mirrornet_client [--context NAME] TAPS_FILE OUT_FILE
 *
 * --context NAME is passed to TEEC_InitializeContext (NULL without it: OP-TEE's default device; for
 * the host simulator, the folder holding <uuid>.sim).
 *
 * File formats (no header, little-endian, what the TA's GET_INFO reports fixes every size):
 *   TAPS_FILE  N records of tap_floats float32 each: one image's tapped maps, concatenated in
 *              strategy order (each NCHW, batch 1). N = file size / (tap_floats * 4) and the file size
 *              must be an exact multiple of it.
 *   OUT_FILE   N records of output_bytes each, in the TA's output policy: num_classes float32 logits
 *              (policy "logits"), num_classes float32 probabilities ("probs"), or one int32 label
 *              ("label"). Written to OUT_FILE.tmp and renamed when complete.
 * --info prints the TA's GET_INFO answer as `key=value` lines on stdout.
 * A summary (records, mean CPM time reported by the TA, mean invoke round trip) goes to stderr.
 * Exit status: 0 success, 1 TEE or TA error, 2 usage or file error.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tee_client_api.h>

#include <mirrornet_ta.h>

static const char *result_name(TEEC_Result r)
{
	switch (r) {
	case TEEC_SUCCESS: return "TEEC_SUCCESS";
	case TEEC_ERROR_GENERIC: return "TEEC_ERROR_GENERIC";
	case TEEC_ERROR_ACCESS_DENIED: return "TEEC_ERROR_ACCESS_DENIED";
	case TEEC_ERROR_BAD_FORMAT: return "TEEC_ERROR_BAD_FORMAT";
	case TEEC_ERROR_BAD_PARAMETERS: return "TEEC_ERROR_BAD_PARAMETERS";
	case TEEC_ERROR_BAD_STATE: return "TEEC_ERROR_BAD_STATE";
	case TEEC_ERROR_ITEM_NOT_FOUND: return "TEEC_ERROR_ITEM_NOT_FOUND";
	case TEEC_ERROR_NOT_SUPPORTED: return "TEEC_ERROR_NOT_SUPPORTED";
	case TEEC_ERROR_OUT_OF_MEMORY: return "TEEC_ERROR_OUT_OF_MEMORY";
	case TEEC_ERROR_COMMUNICATION: return "TEEC_ERROR_COMMUNICATION";
	case TEEC_ERROR_SECURITY: return "TEEC_ERROR_SECURITY";
	case TEEC_ERROR_SHORT_BUFFER: return "TEEC_ERROR_SHORT_BUFFER";
	case TEEC_ERROR_TARGET_DEAD: return "TEEC_ERROR_TARGET_DEAD";
	default: return "unknown";
	}
}

static void report(const char *what, TEEC_Result r, uint32_t origin)
{
	fprintf(stderr, "mirrornet_client: %s failed: 0x%08" PRIx32 " (%s), origin %" PRIu32 "\n",
		what, r, result_name(r), origin);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

struct info {
	uint32_t policy, num_taps, tap_floats, num_classes, output_bytes, max_invoke_bytes;
	uint32_t arena_bytes, weight_bytes, clock_resolution_ns;
	uint32_t tap_sizes[MIRRORNET_TA_MAX_TAPS];
	char sha[65];
};

static int get_info(TEEC_Session *sess, struct info *out)
{
	uint8_t buf[MIRRORNET_TA_INFO_BYTES];
	TEEC_Operation op;
	uint32_t origin, i;
	TEEC_Result r;

	memset(&op, 0, sizeof(op));
	op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_OUTPUT, TEEC_NONE, TEEC_NONE, TEEC_NONE);
	op.params[0].tmpref.buffer = buf;
	op.params[0].tmpref.size = sizeof(buf);
	r = TEEC_InvokeCommand(sess, MIRRORNET_TA_CMD_GET_INFO, &op, &origin);
	if (r != TEEC_SUCCESS) {
		report("GET_INFO", r, origin);
		return -1;
	}
	if (get_u32(buf) != MIRRORNET_TA_INFO_MAGIC || get_u32(buf + 4) != MIRRORNET_TA_ABI_VERSION) {
		fprintf(stderr, "mirrornet_client: the TA speaks another ABI (magic 0x%08" PRIx32
			", version %" PRIu32 "); rebuild the client from the same mirrornet_ta.h\n",
			get_u32(buf), get_u32(buf + 4));
		return -1;
	}
	out->policy = get_u32(buf + 8);
	out->num_taps = get_u32(buf + 12);
	out->tap_floats = get_u32(buf + 16);
	out->num_classes = get_u32(buf + 20);
	out->output_bytes = get_u32(buf + 24);
	out->max_invoke_bytes = get_u32(buf + 28);
	out->arena_bytes = get_u32(buf + 32);
	out->weight_bytes = get_u32(buf + 36);
	out->clock_resolution_ns = get_u32(buf + 40);
	for (i = 0; i < MIRRORNET_TA_MAX_TAPS; i++)
		out->tap_sizes[i] = get_u32(buf + 56 + 4 * i);
	memcpy(out->sha, buf + 120, 64);
	out->sha[64] = '\0';
	if (out->num_taps == 0 || out->num_taps > MIRRORNET_TA_MAX_TAPS || out->tap_floats == 0 ||
	    out->output_bytes == 0 || out->max_invoke_bytes == 0) {
		fprintf(stderr, "mirrornet_client: the TA's GET_INFO answer is inconsistent\n");
		return -1;
	}
	return 0;
}

static void print_info(const struct info *in)
{
	static const char *policies[] = { "logits", "probs", "label" };
	uint32_t i;

	printf("policy=%s\n", in->policy < 3 ? policies[in->policy] : "unknown");
	printf("num_taps=%" PRIu32 "\n", in->num_taps);
	printf("tap_sizes=");
	for (i = 0; i < in->num_taps; i++)
		printf("%s%" PRIu32, i ? "," : "", in->tap_sizes[i]);
	printf("\ntap_floats=%" PRIu32 "\n", in->tap_floats);
	printf("num_classes=%" PRIu32 "\n", in->num_classes);
	printf("output_bytes=%" PRIu32 "\n", in->output_bytes);
	printf("max_invoke_bytes=%" PRIu32 "\n", in->max_invoke_bytes);
	printf("arena_bytes=%" PRIu32 "\n", in->arena_bytes);
	printf("weight_bytes=%" PRIu32 "\n", in->weight_bytes);
	printf("clock_resolution_ns=%" PRIu32 "\n", in->clock_resolution_ns);
	printf("source_sha256=%s\n", in->sha);
}

/* One inference: taps (tap_floats floats) -> out (output_bytes bytes). */
static int run_one(TEEC_Session *sess, const struct info *in, uint8_t *taps, uint8_t *out,
		   uint64_t *cpm_ns)
{
	size_t total = (size_t)in->tap_floats * 4;
	TEEC_Operation op;
	uint32_t origin;
	TEEC_Result r;

	memset(&op, 0, sizeof(op));
	if (total <= in->max_invoke_bytes) {
		op.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_MEMREF_TEMP_OUTPUT,
						 TEEC_VALUE_OUTPUT, TEEC_NONE);
		op.params[0].tmpref.buffer = taps;
		op.params[0].tmpref.size = total;
	} else {
		size_t off;

		for (off = 0; off < total; off += in->max_invoke_bytes) {
			size_t n = total - off < in->max_invoke_bytes ? total - off : in->max_invoke_bytes;
			TEEC_Operation ld;

			memset(&ld, 0, sizeof(ld));
			ld.paramTypes = TEEC_PARAM_TYPES(TEEC_MEMREF_TEMP_INPUT, TEEC_VALUE_INPUT,
							 TEEC_NONE, TEEC_NONE);
			ld.params[0].tmpref.buffer = taps + off;
			ld.params[0].tmpref.size = n;
			ld.params[1].value.a = (uint32_t)off;
			ld.params[1].value.b = (uint32_t)total;
			r = TEEC_InvokeCommand(sess, MIRRORNET_TA_CMD_LOAD_TAPS, &ld, &origin);
			if (r != TEEC_SUCCESS) {
				report("LOAD_TAPS", r, origin);
				return -1;
			}
		}
		op.paramTypes = TEEC_PARAM_TYPES(TEEC_NONE, TEEC_MEMREF_TEMP_OUTPUT,
						 TEEC_VALUE_OUTPUT, TEEC_NONE);
	}
	op.params[1].tmpref.buffer = out;
	op.params[1].tmpref.size = in->output_bytes;
	r = TEEC_InvokeCommand(sess, MIRRORNET_TA_CMD_RUN_CPM, &op, &origin);
	if (r != TEEC_SUCCESS) {
		report("RUN_CPM", r, origin);
		return -1;
	}
	if (op.params[1].tmpref.size != in->output_bytes) {
		fprintf(stderr, "mirrornet_client: the TA wrote %zu bytes, expected %" PRIu32 "\n",
			op.params[1].tmpref.size, in->output_bytes);
		return -1;
	}
	*cpm_ns = (uint64_t)op.params[2].value.a | (uint64_t)op.params[2].value.b << 32;
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: mirrornet_client [--context NAME] --info\n"
			"       mirrornet_client [--context NAME] TAPS_FILE OUT_FILE\n"
			"(file formats: see the comment at the top of src/client/mirrornet_client.c)\n");
	return 2;
}

int main(int argc, char **argv)
{
	const TEEC_UUID uuid = TA_MIRRORNET_UUID;
	const char *context_name = NULL, *in_path = NULL, *out_path = NULL;
	TEEC_Context ctx;
	TEEC_Session sess;
	struct info info;
	uint32_t origin;
	TEEC_Result r;
	int i, want_info = 0, status = 1;
	FILE *fin = NULL, *fout = NULL;
	uint8_t *taps = NULL, *out = NULL;
	char tmp_path[4096];

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--context") && i + 1 < argc)
			context_name = argv[++i];
		else if (!strcmp(argv[i], "--info"))
			want_info = 1;
		else if (argv[i][0] == '-' && argv[i][1])
			return usage();
		else if (!in_path)
			in_path = argv[i];
		else if (!out_path)
			out_path = argv[i];
		else
			return usage();
	}
	if (want_info ? (in_path != NULL) : (!in_path || !out_path))
		return usage();

	r = TEEC_InitializeContext(context_name, &ctx);
	if (r != TEEC_SUCCESS) {
		report("TEEC_InitializeContext", r, TEEC_ORIGIN_API);
		return 1;
	}
	r = TEEC_OpenSession(&ctx, &sess, &uuid, TEEC_LOGIN_PUBLIC, NULL, NULL, &origin);
	if (r != TEEC_SUCCESS) {
		report("TEEC_OpenSession (is " MIRRORNET_TA_UUID_STRING ".ta installed?)", r, origin);
		TEEC_FinalizeContext(&ctx);
		return 1;
	}
	if (get_info(&sess, &info) != 0)
		goto out;
	if (want_info) {
		print_info(&info);
		status = 0;
		goto out;
	}

	{
		size_t rec = (size_t)info.tap_floats * 4;
		long size;
		size_t n, k;
		uint64_t cpm_total = 0;
		double invoke_total = 0;

		fin = fopen(in_path, "rb");
		if (!fin || fseek(fin, 0, SEEK_END) != 0 || (size = ftell(fin)) < 0 ||
		    fseek(fin, 0, SEEK_SET) != 0) {
			fprintf(stderr, "mirrornet_client: cannot read %s: %s\n", in_path, strerror(errno));
			status = 2;
			goto out;
		}
		if (size == 0 || (size_t)size % rec) {
			fprintf(stderr, "mirrornet_client: %s has %ld bytes, not a positive multiple of "
				"one record (%" PRIu32 " floats = %zu bytes)\n", in_path, size,
				info.tap_floats, rec);
			status = 2;
			goto out;
		}
		n = (size_t)size / rec;
		snprintf(tmp_path, sizeof(tmp_path), "%s.tmp", out_path);
		taps = malloc(rec);
		out = malloc(info.output_bytes);
		fout = fopen(tmp_path, "wb");
		if (!taps || !out || !fout) {
			fprintf(stderr, "mirrornet_client: cannot write %s: %s\n", tmp_path, strerror(errno));
			status = 2;
			goto out;
		}
		for (k = 0; k < n; k++) {
			uint64_t cpm_ns = 0;
			double t0;

			if (fread(taps, 1, rec, fin) != rec) {
				fprintf(stderr, "mirrornet_client: short read in %s\n", in_path);
				status = 2;
				goto out;
			}
			t0 = now_s();
			if (run_one(&sess, &info, taps, out, &cpm_ns) != 0)
				goto out;
			invoke_total += now_s() - t0;
			cpm_total += cpm_ns;
			if (fwrite(out, 1, info.output_bytes, fout) != info.output_bytes) {
				fprintf(stderr, "mirrornet_client: cannot write %s\n", tmp_path);
				status = 2;
				goto out;
			}
		}
		if (fclose(fout) != 0) {
			fout = NULL;
			fprintf(stderr, "mirrornet_client: cannot write %s\n", tmp_path);
			status = 2;
			goto out;
		}
		fout = NULL;
		if (rename(tmp_path, out_path) != 0) {
			fprintf(stderr, "mirrornet_client: cannot rename %s: %s\n", tmp_path,
				strerror(errno));
			status = 2;
			goto out;
		}
		fprintf(stderr, "mirrornet_client: %zu records, CPM %.1f us/record (TA clock, "
			"resolution %" PRIu32 " ns), invoke round trip %.1f us/record\n", n,
			(double)cpm_total / 1e3 / (double)n, info.clock_resolution_ns,
			invoke_total * 1e6 / (double)n);
		status = 0;
	}
out:
	if (fin)
		fclose(fin);
	if (fout) {
		fclose(fout);
		remove(tmp_path);
	}
	free(taps);
	free(out);
	TEEC_CloseSession(&sess);
	TEEC_FinalizeContext(&ctx);
	return status;
}
