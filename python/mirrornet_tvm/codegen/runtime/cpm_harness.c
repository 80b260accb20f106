/*
 * cpm_harness.c: a small hosted driver for the generated CPM C, for tests and benchmarks
 * (part of mirrornet-tvm; compiled next to mirrornet_cpm.c, never linked into a TA).
 *
 *   cpm_harness TAPS OUT            run once: TAPS holds the taps' float32 values back to back
 *                                   (MIRRORNET_CPM_TAP_FLOATS floats), OUT receives the logits
 *   cpm_harness TAPS OUT N          also time N inferences, 7 times over, and print the mean time
 *                                   per inference of the fastest and of the median batch:
 *                                   "ns_per_inference <median> <min>" on stdout
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mirrornet_cpm.h"

static float taps_data[MIRRORNET_CPM_TAP_FLOATS];
static float logits[MIRRORNET_CPM_NUM_CLASSES];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    static const int sizes[MIRRORNET_CPM_NUM_TAPS] = MIRRORNET_CPM_TAP_SIZES;
    const float *taps[MIRRORNET_CPM_NUM_TAPS];
    FILE *f;
    size_t offset = 0;
    int i, rc;

    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s TAPS OUT [N]\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f || fread(taps_data, sizeof(float), MIRRORNET_CPM_TAP_FLOATS, f) != MIRRORNET_CPM_TAP_FLOATS) {
        fprintf(stderr, "%s: cannot read %d floats from %s\n", argv[0], MIRRORNET_CPM_TAP_FLOATS, argv[1]);
        return 2;
    }
    fclose(f);
    for (i = 0; i < MIRRORNET_CPM_NUM_TAPS; ++i) {
        taps[i] = taps_data + offset;
        offset += (size_t)sizes[i];
    }
    rc = mirrornet_cpm_run(taps, logits);
    if (rc != 0) {
        fprintf(stderr, "%s: mirrornet_cpm_run returned %d\n", argv[0], rc);
        return 1;
    }
    f = fopen(argv[2], "wb");
    if (!f || fwrite(logits, sizeof(float), MIRRORNET_CPM_NUM_CLASSES, f) != MIRRORNET_CPM_NUM_CLASSES) {
        fprintf(stderr, "%s: cannot write %s\n", argv[0], argv[2]);
        return 2;
    }
    fclose(f);
    if (argc == 4) {
        long n = atol(argv[3]), k;
        double means[7];
        if (n <= 0) {
            fprintf(stderr, "%s: N must be positive\n", argv[0]);
            return 2;
        }
        for (k = 0; k < n / 10 + 1; ++k) mirrornet_cpm_run(taps, logits); /* warm-up */
        for (i = 0; i < 7; ++i) {
            double t0 = now_ns();
            for (k = 0; k < n; ++k) mirrornet_cpm_run(taps, logits);
            means[i] = (now_ns() - t0) / (double)n;
        }
        qsort(means, 7, sizeof(double), cmp_double);
        printf("ns_per_inference %.1f %.1f\n", means[3], means[0]);
    }
    return 0;
}
