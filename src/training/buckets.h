/* buckets.h — aspect-ratio buckets (kohya's bucketing, our own rules): the
 * training sizes for a resolution and which one an image trains at.
 *
 * The buckets of resolution R and step s (s divides R): for each short side
 * a = R, R - s, R - 2s, ... the long side b is the largest multiple of s with
 * a * b <= R * R and b <= 2 a; (a, b) gives the buckets a x b and b x a. The
 * walk stops at the first b = 2 a, so aspect ratios run from 1:2 to 2:1 and
 * every bucket is the largest of its shape. An image trains at the bucket
 * nearest its aspect ratio in log scale (|log(w/h) - log(bw/bh)|), the first
 * of equals in the list, which is sorted by w / h, tallest first.
 * With buckets off every image trains at R x R (one bucket). */
#ifndef KRONA_BUCKETS_H
#define KRONA_BUCKETS_H

typedef struct BucketSize { int w, h; } BucketSize;

/* The largest number of buckets any resolution and step can give: size
 * arrays for bucket_sizes with it. 0 when step does not divide resolution. */
int bucket_count_max(int resolution, int step);
/* The buckets (see above) into out (at most max of them, sorted by w / h).
 * Returns how many there are; -1 when step <= 0 or does not divide resolution. */
int bucket_sizes(int resolution, int step, BucketSize *out, int max);
/* Index of the bucket for a w x h image among b[0..n-1]; -1 when n <= 0 or
 * w, h <= 0. */
int bucket_nearest(const BucketSize *b, int n, int w, int h);
/* bucket_sizes then bucket_nearest: the bucket of a w x h image. 0, or -1 as
 * bucket_sizes. */
int bucket_for_image(int resolution, int step, int w, int h, BucketSize *out);

#endif
