/* The operator's scripts as a versioned, hot-reloadable unit: the content hash of the scripts
 * directory together with the wahook.scripts.config section, checked in a throwaway VM before it
 * becomes current, and a watcher (inotify, debounced) that reloads on change. */
#ifndef WAHOOK_SCRIPTS_H
#define WAHOOK_SCRIPTS_H

#include <jansson.h>
#include <stdint.h>
#include "wahook/config.h"
#include "wahook/lua_vm.h"

/* One script file of a version, as it was read when the version was built. */
typedef struct wh_script_file {
    char *rel;  /* "bot/flow.lua" */
    char *data;
    size_t len;
} wh_script_file_t;

/* One loaded version: immutable, shared by reference between the VMs that run it. Its VMs read
 * modules from files[], the bytes that were hashed and checked, never from the disk again. */
typedef struct wh_scripts_gen {
    uint64_t number;     /* 1 for the version loaded at start, +1 per successful reload */
    wh_script_file_t *files; /* sorted by rel */
    size_t num_files;
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

/* Reads every .lua file under dir (symlinks leading outside it are skipped) into files
 * (malloc'd, sorted) and computes the version: the first 16 hex digits of the SHA-256 of the
 * paths, contents and config. Returns 0 or a WH_E* code with the reason in err. */
int wh_scripts_snapshot(const char *dir, const json_t *config, wh_script_file_t **files,
                        size_t *num_files, char out[17], char *err, size_t errlen);
/* Frees what wh_scripts_snapshot returned. */
void wh_scripts_files_free(wh_script_file_t *files, size_t n);

#endif
