/* suggest.h — "did you mean": the closest of a few names to a mistyped one
 * (command-line options and commands; any list of names). */
#ifndef KRONA_SUGGEST_H
#define KRONA_SUGGEST_H

/* Edit distance ignoring case, a swap of two neighbours counting as one
 * edit; names longer than 63 characters are never close (1000). */
int suggest_distance(const char *a, const char *b);

/* The name among names[0..n) closest to typed, or NULL when none is close
 * enough to be worth suggesting (one edit for up to 4 characters, then one
 * more per 3). Leading '-' are ignored on both sides, so "--stpes" finds
 * "--steps". */
const char *suggest_closest(const char *typed, const char *const *names, int n);

#endif
