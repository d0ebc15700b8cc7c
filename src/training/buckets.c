/* buckets.c — see buckets.h. */
#include "training/buckets.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int bucket_count_max(int resolution, int step) {
    if (step <= 0 || resolution <= 0 || resolution % step) return 0;
    /* short sides run from R down to at least R / 2, two buckets each */
    return 2 * (resolution / step / 2 + 2);
}

/* by w / h, tallest first */
static int cmp_ratio(const void *pa, const void *pb) {
    const BucketSize *a = pa, *b = pb;
    int64_t l = (int64_t)a->w * b->h, r = (int64_t)b->w * a->h;
    return l < r ? -1 : l > r;
}

int bucket_sizes(int resolution, int step, BucketSize *out, int max) {
    int cap = bucket_count_max(resolution, step);
    if (cap <= 0) return -1;
    BucketSize *all = malloc(sizeof *all * (size_t)cap);
    if (!all) return -1;
    int n = 0;
    int64_t area = (int64_t)resolution * resolution;
    for (int a = resolution; a >= step && n + 2 <= cap; a -= step) {
        int64_t b = area / a / step * step;
        if (b > 2 * (int64_t)a) b = 2 * (int64_t)a;
        all[n++] = (BucketSize){a, (int)b};
        if (b != a) all[n++] = (BucketSize){(int)b, a};
        if (b == 2 * (int64_t)a) break;
    }
    qsort(all, (size_t)n, sizeof *all, cmp_ratio);
    for (int i = 0; i < n && i < max; i++) out[i] = all[i];
    free(all);
    return n;
}

int bucket_nearest(const BucketSize *b, int n, int w, int h) {
    if (n <= 0 || w <= 0 || h <= 0) return -1;
    double r = log((double)w / h);
    int best = 0;
    double bd = INFINITY;
    for (int i = 0; i < n; i++) {
        double d = fabs(log((double)b[i].w / b[i].h) - r);
        if (d < bd) { bd = d; best = i; }
    }
    return best;
}

int bucket_for_image(int resolution, int step, int w, int h, BucketSize *out) {
    int cap = bucket_count_max(resolution, step);
    if (cap <= 0) return -1;
    BucketSize *b = malloc(sizeof *b * (size_t)cap);
    if (!b) return -1;
    int n = bucket_sizes(resolution, step, b, cap);
    int k = bucket_nearest(b, n, w, h);
    if (k >= 0) *out = b[k];
    free(b);
    return k >= 0 ? 0 : -1;
}
