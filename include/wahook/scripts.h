/* The operator's scripts as a versioned, hot-reloadable unit: the content hash of the scripts
 * directory together with the wahook.scripts.config section, checked in a throwaway VM before it
 * becomes current, and a watcher (inotify, debounced) that reloads on change. */
#ifndef WAHOOK_SCRIPTS_H
#define WAHOOK_SCRIPTS_H

#include <jansson.h>
#include <stdint.h>
#include "wahook/config.h"
#include "wahook/lua_vm.h"

/* One loaded version: immutable, shared by reference between the VMs that run it. */
typedef struct wh_scripts_gen {
    uint64_t number;     /* 1 for the version loaded at start, +1 per successful reload */
    char version[17];    /* first 16 hex digits of the SHA-256 of the scripts and the config */
    json_t *config;      /* the wahook.scripts.config section (an object) */
    int64_t loaded_at;   /* ms */
    int refs;            /* managed by wh_scripts_gen_ref / _unref */
} wh_scripts_gen_t;

typedef struct wh_scripts wh_scripts_t;

/* Loads the scripts of conf (scripts_dir, limits, config section) and checks them in a throwaway
 * VM. conf_path is re-read on reloads for the config section. Returns NULL with "file:line:
 * message" in err when they do not load. */
wh_scripts_t *wh_scripts_new(const wh_config_t *conf, const char *conf_path, char *err,
                             size_t errlen);
void wh_scripts_free(wh_scripts_t *s);

/* The current version, with a reference the caller releases. Thread-safe. */
wh_scripts_gen_t *wh_scripts_current(wh_scripts_t *s);
void wh_scripts_gen_unref(wh_scripts_t *s, wh_scripts_gen_t *g);
/* The current generation number, cheap enough to poll between events. */
uint64_t wh_scripts_generation(wh_scripts_t *s);

/* Creates a VM for generation g (its config section) and loads main.lua in it. phase_fns:
 * http backend for deliverers (NULL elsewhere). Returns NULL with the reason in err. */
wh_lua_vm_t *wh_scripts_vm_new(wh_scripts_t *s, const wh_scripts_gen_t *g, wh_lua_http_fn http_fn,
                               void *http_ud, char *err, size_t errlen);

/* Reloads now: re-reads the config section, hashes the scripts, loads them in a throwaway VM.
 * On success the new version becomes current (VMs swap between two events) and 0 is returned;
 * on failure the running version stays, the error is kept for /readyz and WH_EINVAL returned
 * with it in err. Serialised: concurrent callers run one after the other. */
int wh_scripts_reload(wh_scripts_t *s, const char *why, char *err, size_t errlen);

/* Starts the watcher thread: inotify on the scripts directory (recursively) and the config
 * file's directory, reacting to create, close-write, moved-to and delete, debounced by the
 * configured quiet time. Returns 0 or WH_EIO (the server still runs; SIGHUP still reloads). */
int wh_scripts_watch(wh_scripts_t *s);

/* Status for /readyz and the admin API: a new object {"version","generation","loaded_at",
 * "reloads","reload_failures","last_error"?}. */
json_t *wh_scripts_status(wh_scripts_t *s);

/* The SHA-256 based version of the scripts in dir plus config, as 16 hex digits. */
int wh_scripts_hash(const char *dir, const json_t *config, char out[17], char *err,
                    size_t errlen);

#endif
