/* scheduler_config.h — a model's noise schedule as diffusers stores it
 * (scheduler/scheduler_config.json): num_train_timesteps, beta_start,
 * beta_end, beta_schedule ("scaled_linear" | "linear") and prediction_type
 * ("epsilon" | "v_prediction"). Other keys (sampler settings) are ignored:
 * the sampler is chosen per run. */
#ifndef KRONA_SCHEDULER_CONFIG_H
#define KRONA_SCHEDULER_CONFIG_H

#include <stddef.h>
#include "models/diffusion.h"

/* Fill s from the JSON text; missing keys keep SD's values (1000 steps,
 * scaled_linear 0.00085..0.012, epsilon). 0, or -1 naming the bad key. */
int schedule_from_json_text(const char *json, Schedule *s, char *err, size_t errlen);
/* The same from a file; errors start with the path. */
int schedule_from_json(const char *path, Schedule *s, char *err, size_t errlen);
/* Write s as a scheduler_config.json (atomically: temp name, then rename). */
int schedule_save_json(const char *path, const Schedule *s, char *err, size_t errlen);
/* SD's schedule, the default for every model without a config. */
void schedule_sd_default(Schedule *s);

#endif
