/* replay.c — see replay.h */
#include "core/replay.h"

#include <stdio.h>
#include <string.h>

enum { MAX_FAILURES = 2 };

int replay_off(const Replay *r) { return r->failures >= MAX_FAILURES; }

int replay_news(const Backend *be, Replay *r, const char *what, int step, char *line, size_t len) {
    if (r->told || !be->record_begin) return 0;
    if (r->replays)
        snprintf(line, len, "step %d: %s recorded on %s, replayed as one launch from now on", step, what, be->name);
    else if (replay_off(r))
        snprintf(line, len, "%s not recorded (runs op by op): %s", what, r->why);
    else
        return 0;
    r->told = 1;
    return 1;
}

int replay_run(Backend *be, Replay *r, ReplayBody body, void *user) {
    if (r->rec) {
        if (be->replay(be, r->rec) == 0) {
            r->replays++;
            return 0;
        }
        be->record_free(be, r->rec); /* stale: run once more, then record again */
        r->rec = NULL;
        r->runs = 0;
    }
    if (!be->record_begin || replay_off(r) || r->runs++ == 0) return body(user);
    if (be->record_begin(be) != 0) { /* declined (off by env, or busy): not a failure of the ops */
        if (!r->why[0]) snprintf(r->why, sizeof r->why, "%s backend declined to record", be->name);
        r->failures = MAX_FAILURES;
        return body(user);
    }
    int rc = body(user); /* recorded, not run */
    char why[256] = "";
    void *rec = be->record_end(be, why, sizeof why);
    if (rc != 0 || !rec) { /* run the ops for real: their own error, or the usual way */
        if (rec) be->record_free(be, rec);
        else if (++r->failures >= MAX_FAILURES) snprintf(r->why, sizeof r->why, "%s", why);
        r->runs = 0;
        return body(user);
    }
    r->rec = rec;
    if (be->replay(be, rec) != 0) { /* freed while recording: the usual way this time */
        be->record_free(be, rec);
        r->rec = NULL;
        r->runs = 0;
        return body(user);
    }
    r->replays++;
    return 0;
}

void replay_free(Backend *be, Replay *r) {
    if (r->rec) be->record_free(be, r->rec);
    memset(r, 0, sizeof *r);
}
