/* The HTTP server: h2o event-loop threads serving the webhook route, the health endpoints and the
 * admin listener, with deferred responses answered only after the store commits. */
#ifndef WAHOOK_SERVER_H
#define WAHOOK_SERVER_H

#include "wahook/config.h"

typedef struct wh_server wh_server_t;

/* Builds the server from a validated config: opens the store (running migrations), binds every
 * listener (so that "address in use" is reported before anything runs). Returns 0 or a WH_E*
 * code with the reason in err. */
int wh_server_create(wh_server_t **out, wh_config_t *conf, char *err, size_t errlen);

/* Runs the loop threads until SIGTERM or SIGINT, then shuts down gracefully: stops accepting,
 * answers or refuses every in-flight request, flushes the store, returns 0. The calling thread
 * handles signals; call it from main with no other threads running. */
int wh_server_run(wh_server_t *s);

/* Releases what create allocated. */
void wh_server_free(wh_server_t *s);

#endif
