/* Processors: N threads, each with its own Lua VM, that run the operator's handlers on stored
 * events and due timers, partitioned by contact so that one contact's events run in arrival
 * order on one thread, and commit each outcome in one transaction through the store writer. */
#ifndef WAHOOK_PROCESS_H
#define WAHOOK_PROCESS_H

#include <jansson.h>
#include "wahook/config.h"
#include "wahook/outcome.h"
#include "wahook/scripts.h"
#include "wahook/store.h"

typedef struct wh_processors wh_processors_t;

/* Starts conf->processors threads reading the database at db_path and committing through store,
 * running the current version of scripts (swapped between two events after a reload). Registers
 * itself as the store's commit hook so a committed event wakes its processor at once. Returns 0
 * or a WH_E* code with the reason in err. */
int wh_processors_start(wh_processors_t **out, const wh_config_t *conf, wh_store_t *store,
                        const char *db_path, wh_scripts_t *scripts, char *err, size_t errlen);

struct wh_deliverers;
/* Lets processors ask whether an Evolution send is in flight (to hold back its echo). Call once
 * the deliverers run; NULL turns the check off. */
void wh_processors_set_deliverers(wh_processors_t *p, struct wh_deliverers *d);

/* Wakes every processor (new work may be due). Thread-safe, cheap. */
void wh_processors_wake(wh_processors_t *p);

/* Lets every processor finish the batch it is running, waits for its commits, joins the threads
 * and frees them. Call before closing the store. NULL is fine. */
void wh_processors_stop(wh_processors_t *p);

/* Counters for /readyz and metrics: a new object {"processed","failed","dead","timers",
 * "normalize_errors","contact_mismatches"}. */
json_t *wh_processors_stats(wh_processors_t *p);

/* The event table a handler sees for a stored event: the envelope fields of body (a JSON
 * object), plus "id", "received_at", "contact" (NULL when none) and "attempt" (1-based). A new
 * reference, or NULL when body is not a JSON object. Shared with `wahook try`. */
json_t *wh_process_build_event(int64_t id, int64_t received_at, const char *contact_key,
                               const char *body, int attempt);

/* Runs normalize.lua's event(ev) in vm and stores the result as ev.msg. Returns 0, or a WH_E*
 * code with the error in err (ev is then left without msg). */
int wh_process_normalize(wh_lua_vm_t *vm, json_t *ev, char *err, size_t errlen);

/* The retry wait (ms) before attempt number `attempts + 1`: base * 2^(attempts-1), capped at
 * max_ms, with ±20% jitter. */
int64_t wh_process_backoff(int attempts, int64_t base_ms, int64_t max_ms);

#endif
