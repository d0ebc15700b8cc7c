/* replay.h — run a fixed sequence of backend ops, then replay it as one recording.
 * A training step's UNet forward and backward are ~1,500 small launches on a
 * GPU; recorded once (be->record_begin, core/backend.h) they cost one. The
 * first call runs the ops the usual way (so the backend's caches hold what
 * they need), the second records them and replays the recording, later calls
 * only replay. A recording that went stale (memory it used was freed: the UNet
 * grew an arena for sampling) is dropped, the ops run the usual way and are
 * recorded again next time. Where recording is not possible (a backend without
 * it, env KRONA_CUDA_GRAPHS=0, an op that cannot be recorded) the ops always
 * run the usual way, and `why` says why once.
 *
 * The ops must be the same every call: same pointers, shapes and host scalars
 * (per-step values go through device memory written before the call). */
#ifndef KRONA_REPLAY_H
#define KRONA_REPLAY_H

#include "core/backend.h"

typedef struct {
    void *rec;    /* the recording, NULL until made */
    int runs;     /* calls since the last (re)start: 0 runs, 1 records */
    int failures; /* recordings that failed; at 2 recording stops */
    int replays;  /* calls answered by a replay */
    char why[256];/* why recording stopped ("" while it has not) */
    int told;     /* replay_news has said how this one went */
} Replay;

/* body(user) issues the ops and returns 0, or -1 on a failure of its own */
typedef int (*ReplayBody)(void *user);

/* runs or replays body's ops: body's own result (a replay: 0) */
int replay_run(Backend *be, Replay *r, ReplayBody body, void *user);
/* 1 once recording has stopped for good (r->why says why) */
int replay_off(const Replay *r);
/* once, when it is known: a log line saying that `what` (e.g. "UNet pass") was
 * recorded at step `step` and is replayed from now on, or why it runs op by op.
 * 1 with the line in line, 0 when there is nothing (new) to say (also on a
 * backend that never records) */
int replay_news(const Backend *be, Replay *r, const char *what, int step, char *line, size_t len);
void replay_free(Backend *be, Replay *r);

#endif
