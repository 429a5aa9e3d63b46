/* What one handler run produces: queued actions, timers set and cancelled, the contact's new
 * state, script facts and metric increments. The processor commits all of it in the event's
 * transaction, or none of it (a failed run is reset, so nothing it queued ever leaves). */
#ifndef WAHOOK_OUTCOME_H
#define WAHOOK_OUTCOME_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Per-run caps. A host function that would exceed one raises a script error naming the cap. */
typedef struct wh_outcome_limits {
    size_t max_actions;       /* actions queued by one run (default 100) */
    size_t max_timers;        /* distinct timer names set or cancelled by one run (default 50) */
    size_t max_facts;         /* wahook.record calls per run (default 100) */
    size_t max_metrics;       /* distinct metric name+labels per run (default 100) */
    size_t max_state_bytes;   /* serialised state (default 64 KiB) */
    size_t max_payload_bytes; /* fields of one crm/alert action, one timer payload (default 64 KiB) */
    size_t max_mail_bytes;    /* one mail: body plus decoded attachments (default 10 MiB) */
    size_t max_total_bytes;   /* everything one run queues (default 16 MiB) */
} wh_outcome_limits_t;

#define WH_OUTCOME_MAX_ACTIONS 100
#define WH_OUTCOME_MAX_TIMERS 50
#define WH_OUTCOME_MAX_FACTS 100
#define WH_OUTCOME_MAX_METRICS 100
#define WH_OUTCOME_MAX_STATE_BYTES (64u * 1024u)
#define WH_OUTCOME_MAX_PAYLOAD_BYTES (64u * 1024u)
#define WH_OUTCOME_MAX_MAIL_BYTES (10u * 1024u * 1024u)
#define WH_OUTCOME_MAX_TOTAL_BYTES (16u * 1024u * 1024u)

/* How a run changed the contact's state. */
enum { WH_STATE_UNCHANGED = 0, WH_STATE_SET = 1, WH_STATE_CLEARED = 2 };

/* One run's results. Fields are readable, but use the accessors; mutate only through the
 * functions below so the caps and the timer rules hold. Not thread-safe (one run, one thread). */
typedef struct wh_outcome {
    json_t *actions;     /* array of {"type":"send_text"|"crm"|"alert"|"mail", …fields} */
    json_t *timers;      /* array of {"name":s,"due_at":ms,"payload":{…}} (payload may be absent) */
    json_t *cancelled;   /* array of timer names */
    int state_change;    /* WH_STATE_* */
    json_t *state;       /* the new state (an object) when state_change == WH_STATE_SET */
    json_t *prior_state; /* the contact's state before the run (caller-provided) or NULL */
    json_t *facts;       /* array of {"kind":s,"fields":{…}} */
    json_t *metrics;     /* array of {"name":s,"labels":{…},"value":n}, one per name+labels */
    size_t bytes;        /* approximate serialised size of what is queued, for max_total_bytes */
    wh_outcome_limits_t limits;
} wh_outcome_t;

/* Fills l with the defaults above. */
void wh_outcome_limits_default(wh_outcome_limits_t *l);

/* Prepares an empty outcome with limits (NULL: defaults; a zero field also means its default).
 * Returns 0 or WH_ENOMEM (then out needs no free). */
int wh_outcome_init(wh_outcome_t *out, const wh_outcome_limits_t *limits);

/* Records the contact's state before the run: what wahook.state.get() sees until the script
 * sets it. Takes a new reference to state (an object, or NULL for "no state yet"). Survives
 * wh_outcome_reset, so a retried run sees the same prior state. */
void wh_outcome_set_prior_state(wh_outcome_t *out, json_t *state);

/* Drops everything the run produced (actions, timers, state change, facts, metrics); keeps the
 * limits and the prior state. Used when a run fails. */
void wh_outcome_reset(wh_outcome_t *out);

/* Releases everything; out may be re-initialised afterwards. Safe on a zeroed struct. */
void wh_outcome_free(wh_outcome_t *out);

/* The add/set functions below always take ownership of the json_t they are given (also on
 * failure). They return 0, WH_EFULL with a message naming the cap, WH_EINVAL for a malformed
 * argument, or WH_ENOMEM. The message is written to err (errlen bytes, may be 0). */

/* Queues an action: an object whose "type" is a non-empty string. */
int wh_outcome_add_action(wh_outcome_t *out, json_t *action, char *err, size_t errlen);

/* Schedules timer name at due_at_ms (epoch ms) with payload (object or NULL). A timer of the same
 * name set earlier in this run is replaced, and a cancel of that name in this run is undone: each
 * name ends up in at most one of timers / cancelled, so applying both lists in any order is
 * correct. */
int wh_outcome_set_timer(wh_outcome_t *out, const char *name, int64_t due_at_ms, json_t *payload,
                         char *err, size_t errlen);

/* Cancels the pending timer name (and one set earlier in this run). */
int wh_outcome_cancel_timer(wh_outcome_t *out, const char *name, char *err, size_t errlen);

/* Sets the new state (an object, checked against max_state_bytes) or clears it (NULL). */
int wh_outcome_set_state(wh_outcome_t *out, json_t *state, char *err, size_t errlen);

/* Adds a script fact {kind, fields}; fields is an object (NULL: {}). The caller validates kinds. */
int wh_outcome_add_fact(wh_outcome_t *out, const char *kind, json_t *fields, char *err,
                        size_t errlen);

/* Counts one increment of metric name with labels (object or NULL). Repeated increments of the
 * same name and labels in a run add up in one entry. */
int wh_outcome_add_metric(wh_outcome_t *out, const char *name, json_t *labels, char *err,
                          size_t errlen);

/* Borrowed views, valid until the next change; never NULL after a successful init. */
json_t *wh_outcome_actions(const wh_outcome_t *out);
json_t *wh_outcome_timers(const wh_outcome_t *out);
json_t *wh_outcome_cancelled(const wh_outcome_t *out);
json_t *wh_outcome_facts(const wh_outcome_t *out);
json_t *wh_outcome_metrics(const wh_outcome_t *out);
/* WH_STATE_UNCHANGED, WH_STATE_SET or WH_STATE_CLEARED. */
int wh_outcome_state_change(const wh_outcome_t *out);
/* The state as the script sees it now: the set value, NULL when cleared, else the prior state.
 * Borrowed. */
json_t *wh_outcome_current_state(const wh_outcome_t *out);
/* 1 when the run produced nothing at all. */
int wh_outcome_is_empty(const wh_outcome_t *out);

/* A new JSON object describing the outcome, for `wahook try` and tests:
 * {"actions":[…],"timers":[…],"cancelled":[…],"state":{"change":"unchanged"|"set"|"cleared"
 *  [,"value":{…}]},"facts":[…],"metrics":[…]}. NULL on allocation failure. */
json_t *wh_outcome_to_json(const wh_outcome_t *out);

/* Approximate compact-JSON size of j in bytes (strings counted without escapes). */
size_t wh_outcome_json_size(const json_t *j);

#endif
