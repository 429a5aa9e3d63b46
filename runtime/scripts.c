/* Versioned scripts: content hashing, checked reloads with an atomic swap of the current
 * generation, and the inotify watcher that triggers them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wahook/common.h"
#include "wahook/config.h"
#include "wahook/log.h"
#include "wahook/scripts.h"
#include <lua.h>

#define WH__MAX_SCRIPT_FILES 4096
#define WH__MAX_WATCH_DIRS 256
#define WH__MAX_SCRIPT_BYTES ((size_t)8 * 1024 * 1024)

struct wh_scripts {
    char *dir;
    char *conf_path;
    size_t mem_limit;
    int deadline_ms;
    int64_t debounce_ms;
    char *crm_module; /* checked with main.lua when a CRM target is configured */

    pthread_mutex_t mu;     /* guards current and the counters */
    pthread_mutex_t reload_mu; /* serialises reloads */
    wh_scripts_gen_t *current;
    atomic_uint_fast64_t generation;
    uint64_t reloads, failures;
    char *last_error;

    pthread_t watcher;
    int watching;
    int stop_pipe[2];
};

/* ---- snapshots ---------------------------------------------------------------------------- */

typedef struct wh__file_list {
    wh_script_file_t *v;
    size_t n, cap;
} wh__file_list_t;

static int wh__cmp_file(const void *a, const void *b)
{
    return strcmp(((const wh_script_file_t *)a)->rel, ((const wh_script_file_t *)b)->rel);
}

static char *wh__read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf != NULL && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            if (cap >= WH__MAX_SCRIPT_BYTES) {
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap *= 2);
            if (nb == NULL)
                free(buf);
            buf = nb;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static int wh__collect(const char *root, const char *real_root, const char *rel,
                       wh__file_list_t *l, int depth)
{
    if (depth > 16)
        return 0;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    struct dirent *e;
    int rc = 0;
    size_t rl = strlen(real_root);
    while ((e = readdir(d)) != NULL && rc == 0) {
        if (e->d_name[0] == '.')
            continue;
        /* Busted specs live beside the scripts but are not part of what runs. */
        if (depth == 0 && strcmp(e->d_name, "spec") == 0)
            continue;
        char sub[PATH_MAX], full[PATH_MAX * 2], real[PATH_MAX];
        if ((size_t)snprintf(sub, sizeof(sub), "%s%s%s", rel, rel[0] ? "/" : "", e->d_name) >=
            sizeof(sub))
            continue;
        snprintf(full, sizeof(full), "%s/%s", root, sub);
        /* A symlink that leads outside the scripts directory is not part of the scripts. */
        if (realpath(full, real) == NULL || strncmp(real, real_root, rl) != 0 || real[rl] != '/')
            continue;
        struct stat st;
        if (stat(real, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = wh__collect(root, real_root, sub, l, depth + 1);
            continue;
        }
        size_t n = strlen(sub);
        if (!S_ISREG(st.st_mode) || n < 4 || strcmp(sub + n - 4, ".lua") != 0)
            continue;
        if (l->n == WH__MAX_SCRIPT_FILES)
            break;
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 64;
            wh_script_file_t *nv = realloc(l->v, cap * sizeof(*nv));
            if (nv == NULL) {
                rc = -1;
                break;
            }
            l->v = nv;
            l->cap = cap;
        }
        wh_script_file_t *f = &l->v[l->n];
        f->data = wh__read_file(real, &f->len);
        if (f->data == NULL)
            continue; /* removed meanwhile, or too large: the next change reloads again */
        if ((f->rel = strdup(sub)) == NULL) {
            free(f->data);
            rc = -1;
            break;
        }
        l->n++;
    }
    closedir(d);
    return rc;
}

void wh_scripts_files_free(wh_script_file_t *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(files[i].rel);
        free(files[i].data);
    }
    free(files);
}

int wh_scripts_snapshot(const char *dir, const json_t *config, wh_script_file_t **files,
                        size_t *num_files, char out[17], char *err, size_t errlen)
{
    int rc = WH_ERR;
    wh__file_list_t l = {0};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    char *cfg = NULL;
    char real_root[PATH_MAX];
    *files = NULL;
    *num_files = 0;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    if (realpath(dir, real_root) == NULL || wh__collect(dir, real_root, "", &l, 0) != 0) {
        snprintf(err, errlen, "cannot read scripts directory %s: %s", dir, strerror(errno));
        rc = WH_EIO;
        goto out;
    }
    qsort(l.v, l.n, sizeof(*l.v), wh__cmp_file);
    for (size_t i = 0; i < l.n; i++) {
        EVP_DigestUpdate(md, l.v[i].rel, strlen(l.v[i].rel) + 1);
        EVP_DigestUpdate(md, l.v[i].data, l.v[i].len);
    }
    cfg = config != NULL ? json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (cfg != NULL)
        EVP_DigestUpdate(md, cfg, strlen(cfg));
    unsigned char digest[32];
    unsigned int dlen = 0;
    EVP_DigestFinal_ex(md, digest, &dlen);
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    *files = l.v;
    *num_files = l.n;
    l.v = NULL;
    l.n = 0;
    rc = WH_OK;
out:
    wh_scripts_files_free(l.v, l.n);
    free(cfg);
    EVP_MD_CTX_free(md);
    return rc;
}

/* ---- generations -------------------------------------------------------------------------- */

static void wh__gen_free(wh_scripts_gen_t *g)
{
    json_decref(g->config);
    wh_scripts_files_free(g->files, g->num_files);
    free(g);
}

static int wh__gen_source(void *ud, const char *rel, const char **data, size_t *len)
{
    const wh_scripts_gen_t *g = ud;
    wh_script_file_t key = {.rel = (char *)rel};
    const wh_script_file_t *f = bsearch(&key, g->files, g->num_files, sizeof(*f), wh__cmp_file);
    if (f == NULL)
        return WH_ENOTFOUND;
    *data = f->data;
    *len = f->len;
    return WH_OK;
}

wh_scripts_gen_t *wh_scripts_current(wh_scripts_t *s)
{
    pthread_mutex_lock(&s->mu);
    wh_scripts_gen_t *g = s->current;
    g->refs++;
    pthread_mutex_unlock(&s->mu);
    return g;
}

void wh_scripts_gen_unref(wh_scripts_t *s, wh_scripts_gen_t *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last)
        wh__gen_free(g);
}

uint64_t wh_scripts_generation(wh_scripts_t *s)
{
    return atomic_load(&s->generation);
}

wh_lua_vm_t *wh_scripts_vm_new(wh_scripts_t *s, const wh_scripts_gen_t *g, wh_lua_http_fn http_fn,
                               void *http_ud, char *err, size_t errlen)
{
    wh_lua_vm_opts_t o = {.scripts_dir = s->dir,
                          .mem_limit = s->mem_limit,
                          .deadline_ms = s->deadline_ms,
                          .config_json = g->config,
                          .http_fn = http_fn,
                          .http_ud = http_ud,
                          .source_fn = wh__gen_source,
                          .source_ud = (void *)g};
    wh_lua_vm_t *vm = wh_lua_vm_new(&o, err, errlen);
    if (vm == NULL)
        return NULL;
    if (wh_lua_vm_load_main(vm, err, errlen) != WH_OK) {
        wh_lua_vm_free(vm);
        return NULL;
    }
    return vm;
}

/* Builds a checked generation from the scripts on disk and config section cfg (taken). */
static wh_scripts_gen_t *wh__gen_build(wh_scripts_t *s, json_t *cfg, char *err, size_t errlen)
{
    wh_scripts_gen_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        json_decref(cfg);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->config = cfg != NULL ? cfg : json_object();
    g->loaded_at = wh_now_ms();
    if (wh_scripts_snapshot(s->dir, g->config, &g->files, &g->num_files, g->version, err,
                            errlen) != WH_OK) {
        wh__gen_free(g);
        return NULL;
    }
    /* Load everything in a throwaway VM: a version that does not load never becomes current. */
    wh_lua_vm_t *vm = wh_scripts_vm_new(s, g, NULL, NULL, err, errlen);
    if (vm == NULL) {
        wh__gen_free(g);
        return NULL;
    }
    /* The CRM mapping module runs in the deliverers: check it loads too, or a typo there would
     * only show at the first CRM delivery. */
    if (s->crm_module != NULL) {
        lua_State *L = wh_lua_vm_state(vm);
        int top = lua_gettop(L);
        if (lua_getglobal(L, "require") == LUA_TFUNCTION) {
            lua_pushstring(L, s->crm_module);
            if (wh_lua_vm_call(vm, 1, 1, err, errlen) != WH_OK) {
                lua_settop(L, top);
                wh_lua_vm_free(vm);
                wh__gen_free(g);
                return NULL;
            }
        }
        lua_settop(L, top);
    }
    wh_lua_vm_free(vm);
    return g;
}

wh_scripts_t *wh_scripts_new(const wh_config_t *conf, const char *conf_path, char *err,
                             size_t errlen)
{
    wh_scripts_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->reload_mu, NULL);
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    s->dir = strdup(conf->scripts_dir != NULL ? conf->scripts_dir : "scripts");
    s->conf_path = conf_path != NULL ? strdup(conf_path) : NULL;
    s->mem_limit = (size_t)conf->script_memory;
    s->deadline_ms = (int)conf->script_timeout_ms;
    s->debounce_ms = conf->reload_debounce_ms;
    if (conf->crm.url != NULL && conf->crm.url[0] != '\0' && conf->crm.module != NULL)
        s->crm_module = strdup(conf->crm.module);
    json_t *cfg = conf->scripts_config != NULL ? json_deep_copy(conf->scripts_config) : NULL;
    s->current = wh__gen_build(s, cfg, err, errlen);
    if (s->current == NULL) {
        wh_scripts_free(s);
        return NULL;
    }
    s->current->number = 1;
    s->current->refs = 1;
    atomic_store(&s->generation, 1);
    return s;
}

int wh_scripts_reload(wh_scripts_t *s, const char *why, char *err, size_t errlen)
{
    char local[1024];
    if (err == NULL || errlen == 0) {
        err = local;
        errlen = sizeof(local);
    }
    pthread_mutex_lock(&s->reload_mu);
    json_t *cfg = NULL;
    int rc = WH_OK;
    if (s->conf_path != NULL) {
        /* The config section is re-read with the scripts; the rest of the file needs a restart. */
        wh_config_t conf;
        if (wh_config_load(&conf, s->conf_path, err, errlen) != WH_OK) {
            rc = WH_EINVAL;
        } else {
            cfg = conf.scripts_config != NULL ? json_deep_copy(conf.scripts_config) : NULL;
            wh_config_free(&conf);
        }
    } else {
        pthread_mutex_lock(&s->mu);
        cfg = json_deep_copy(s->current->config);
        pthread_mutex_unlock(&s->mu);
    }
    wh_scripts_gen_t *g = rc == WH_OK ? wh__gen_build(s, cfg, err, errlen) : NULL;
    if (rc != WH_OK)
        json_decref(cfg);
    if (g == NULL) {
        pthread_mutex_lock(&s->mu);
        s->failures++;
        free(s->last_error);
        s->last_error = strdup(err);
        pthread_mutex_unlock(&s->mu);
        wh_log(WH_LOG_ERROR, "script reload failed; the running version stays", "{s:s,s:s}",
               "trigger", why, "error", err);
        pthread_mutex_unlock(&s->reload_mu);
        return WH_EINVAL;
    }
    pthread_mutex_lock(&s->mu);
    wh_scripts_gen_t *old = s->current;
    int same = strcmp(old->version, g->version) == 0;
    g->number = old->number + 1;
    g->refs = 1;
    s->current = g;
    s->reloads++;
    free(s->last_error);
    s->last_error = NULL;
    int last = --old->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last)
        wh__gen_free(old);
    atomic_store(&s->generation, g->number);
    wh_log(WH_LOG_INFO, "scripts reloaded", "{s:s,s:s,s:I,s:b}", "trigger", why, "version",
           g->version, "generation", (json_int_t)g->number, "unchanged", same);
    pthread_mutex_unlock(&s->reload_mu);
    return WH_OK;
}

json_t *wh_scripts_status(wh_scripts_t *s)
{
    pthread_mutex_lock(&s->mu);
    json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I}", "version", s->current->version, "generation",
                          (json_int_t)s->current->number, "loaded_at",
                          (json_int_t)s->current->loaded_at, "reloads", (json_int_t)s->reloads,
                          "reload_failures", (json_int_t)s->failures);
    if (o != NULL && s->last_error != NULL)
        json_object_set_new(o, "last_error", json_string(s->last_error));
    pthread_mutex_unlock(&s->mu);
    return o;
}

/* ---- watcher ------------------------------------------------------------------------------ */

static void wh__watch_tree(int fd, const char *dir, int depth)
{
    if (depth > 16)
        return;
    inotify_add_watch(fd, dir,
                      IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                          IN_ONLYDIR);
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char sub[PATH_MAX];
        snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            wh__watch_tree(fd, sub, depth + 1);
    }
    closedir(d);
}

static void *wh__watch_main(void *arg)
{
    wh_scripts_t *s = arg;
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0) {
        wh_log(WH_LOG_WARN, "inotify unavailable; reload with SIGHUP or wahook reload", NULL);
        return NULL;
    }
    wh__watch_tree(fd, s->dir, 0);
    char conf_dir[PATH_MAX] = ".";
    if (s->conf_path != NULL) {
        snprintf(conf_dir, sizeof(conf_dir), "%s", s->conf_path);
        char *slash = strrchr(conf_dir, '/');
        if (slash != NULL)
            *slash = '\0';
        else
            strcpy(conf_dir, ".");
        inotify_add_watch(fd, conf_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE);
    }
    const char *conf_base = NULL;
    if (s->conf_path != NULL) {
        conf_base = strrchr(s->conf_path, '/');
        conf_base = conf_base != NULL ? conf_base + 1 : s->conf_path;
    }

    int pending = 0;
    double due = 0;
    for (;;) {
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
        int timeout = -1;
        if (pending) {
            double left = due - wh_mono_now();
            timeout = left <= 0 ? 0 : (int)(left * 1000) + 1;
        }
        int n = poll(pfd, 2, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            break;
        if (n > 0 && (pfd[0].revents & POLLIN)) {
            char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
            ssize_t len;
            while ((len = read(fd, buf, sizeof(buf))) > 0) {
                for (char *p = buf; p < buf + len;) {
                    struct inotify_event *ev = (struct inotify_event *)p;
                    p += sizeof(*ev) + ev->len;
                    const char *name = ev->len > 0 ? ev->name : "";
                    /* Only .lua files, new directories and the config file matter; editors'
                     * swap and backup files do not. */
                    size_t nl = strlen(name);
                    int is_lua = nl > 4 && strcmp(name + nl - 4, ".lua") == 0;
                    int is_conf = conf_base != NULL && strcmp(name, conf_base) == 0;
                    int is_dir = (ev->mask & IN_ISDIR) != 0;
                    if (!is_lua && !is_conf && !is_dir)
                        continue;
                    if (is_dir && (ev->mask & (IN_CREATE | IN_MOVED_TO)))
                        wh__watch_tree(fd, s->dir, 0); /* new subdirectory: watch it too */
                    pending = 1;
                    due = wh_mono_now() + (double)s->debounce_ms / 1000.0;
                }
            }
        }
        if (pending && wh_mono_now() >= due) {
            pending = 0;
            wh_scripts_reload(s, "file change", NULL, 0);
        }
    }
    close(fd);
    return NULL;
}

int wh_scripts_watch(wh_scripts_t *s)
{
    if (s->watching)
        return WH_OK;
    if (pipe2(s->stop_pipe, O_CLOEXEC) != 0)
        return WH_EIO;
    if (pthread_create(&s->watcher, NULL, wh__watch_main, s) != 0)
        return WH_EIO;
    s->watching = 1;
    return WH_OK;
}

void wh_scripts_free(wh_scripts_t *s)
{
    if (s == NULL)
        return;
    if (s->watching) {
        ssize_t w = write(s->stop_pipe[1], "x", 1);
        (void)w;
        pthread_join(s->watcher, NULL);
    }
    if (s->stop_pipe[0] >= 0)
        close(s->stop_pipe[0]);
    if (s->stop_pipe[1] >= 0)
        close(s->stop_pipe[1]);
    if (s->current != NULL)
        wh_scripts_gen_unref(s, s->current);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->reload_mu);
    free(s->last_error);
    free(s->dir);
    free(s->conf_path);
    free(s->crm_module);
    free(s);
}
