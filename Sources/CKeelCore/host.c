/* Host side of the Keel core: backends (built-in and plugins), models and
 * sessions as seen through keel.h. Every model goes through a backend's
 * function table, the built-in one included, so plugins get no second path. */
#include "internal.h"

#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEEL_VERSION_STRING "0.1.0"

struct keel_backend {
    const keel_backend_api *api;
    void *dl;              /* dlopen handle; NULL for the built-in backend */
    char *path;
};

struct keel_model {
    const keel_backend *backend;
    void *impl;
    char sha256[65];
};

struct keel_session {
    const keel_model *model;
    void *impl;
    /* keel_session_bind: copies of the caller's views, and the run's own output views */
    keel_tensor *bound_in, *bound_out, *run_out;
    size_t n_bound_in, n_bound_out;
    bool bound;
};

const char *keel_version_string(void) { return KEEL_VERSION_STRING; }

/* ---- memory helpers ----------------------------------------------------------- */

void *keel_aligned_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    size_t rounded;
    if (!keel_add_size(bytes, 63, &rounded)) return NULL;
    rounded &= ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void keel_aligned_free(void *p) { free(p); }

char *keel_strdup(const char *s) {
    if (s == NULL) s = "";
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL) memcpy(d, s, n);
    return d;
}

/* ---- BLAS threads ------------------------------------------------------------- */

static atomic_int g_blas_threads_set = 0;
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

static void blas_init(void) {
    if (atomic_load(&g_blas_threads_set)) return;
    int n = 1;
    const char *env = getenv("KEEL_BLAS_THREADS");
    if (env != NULL) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (end != env && *end == '\0' && v >= 1 && v <= 1024) n = (int)v;
    }
    openblas_set_num_threads(n);
}

void keel_blas_init_once(void) { pthread_once(&g_blas_once, blas_init); }

keel_status keel_blas_set_threads(int n, keel_error *err) {
    if (n < 1 || n > 1024)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "BLAS thread count must be between 1 and 1024, got %d", n);
    atomic_store(&g_blas_threads_set, 1);
    openblas_set_num_threads(n);
    return KEEL_OK;
}

int keel_blas_threads(void) { return openblas_get_num_threads(); }

const char *keel_blas_core_name(void) {
    const char *name = openblas_get_corename();
    return name ? name : "unknown";
}

int keel_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

/* ---- backends ----------------------------------------------------------------- */

static keel_backend g_builtin = {NULL, NULL, NULL};
static pthread_once_t g_builtin_once = PTHREAD_ONCE_INIT;

static void builtin_init(void) { g_builtin.api = keel_onnx_backend_api(); }

const keel_backend *keel_backend_builtin(void) {
    pthread_once(&g_builtin_once, builtin_init);
    return &g_builtin;
}

/* Size of the table up to and including the last ABI 1.0 entry. */
#define ABI_1_0_SIZE (offsetof(keel_backend_api, model_property_entry) + sizeof(void *))

keel_status keel_backend_open(const char *path, keel_backend **out, keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    *out = NULL;
    if (path == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "plugin path must not be NULL");
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        const char *why = dlerror();
        return keel_error_set(err, KEEL_ERR_PLUGIN, "cannot load plugin '%s': %s", path,
                              why ? why : "unknown dlopen error");
    }
    keel_backend_get_api_fn get = NULL;
    void *sym = dlsym(dl, KEEL_BACKEND_ENTRY_POINT);
    memcpy(&get, &sym, sizeof get);
    if (get == NULL) {
        dlclose(dl);
        return keel_error_set(err, KEEL_ERR_PLUGIN, "plugin '%s' does not export %s", path,
                              KEEL_BACKEND_ENTRY_POINT);
    }
    const keel_backend_api *api = get(KEEL_BACKEND_ABI_MAJOR, KEEL_BACKEND_ABI_MINOR);
    keel_status st = KEEL_OK;
    if (api == NULL) {
        st = keel_error_set(err, KEEL_ERR_VERSION,
                            "plugin '%s' offers no function table for host ABI %u.%u", path,
                            KEEL_BACKEND_ABI_MAJOR, KEEL_BACKEND_ABI_MINOR);
    } else if (api->abi_major != KEEL_BACKEND_ABI_MAJOR) {
        st = keel_error_set(err, KEEL_ERR_VERSION,
                            "plugin '%s' was built for ABI %u.%u; this host speaks major version %u",
                            path, api->abi_major, api->abi_minor, KEEL_BACKEND_ABI_MAJOR);
    } else if (api->abi_minor > KEEL_BACKEND_ABI_MINOR) {
        st = keel_error_set(err, KEEL_ERR_VERSION,
                            "plugin '%s' needs ABI %u.%u, newer than this host's %u.%u: upgrade Keel",
                            path, api->abi_major, api->abi_minor, KEEL_BACKEND_ABI_MAJOR,
                            KEEL_BACKEND_ABI_MINOR);
    } else if (api->struct_size < ABI_1_0_SIZE) {
        st = keel_error_set(err, KEEL_ERR_PLUGIN,
                            "plugin '%s' declares a function table of %zu bytes, smaller than ABI 1.0's %zu",
                            path, api->struct_size, (size_t)ABI_1_0_SIZE);
    } else if (api->name == NULL || api->version == NULL || api->model_load == NULL ||
               api->model_free == NULL || api->model_input_count == NULL ||
               api->model_output_count == NULL || api->model_input_info == NULL ||
               api->model_output_info == NULL || api->model_metadata_count == NULL ||
               api->model_metadata_entry == NULL || api->model_node_count == NULL ||
               api->model_node_info == NULL || api->model_parameter_count == NULL ||
               api->instance_create == NULL || api->instance_free == NULL ||
               api->instance_run == NULL || api->model_property_count == NULL ||
               api->model_property_entry == NULL) {
        st = keel_error_set(err, KEEL_ERR_PLUGIN,
                            "plugin '%s' leaves a required ABI 1.0 entry (or its name/version) NULL", path);
    }
    if (st != KEEL_OK) {
        dlclose(dl);
        return st;
    }
    keel_backend *b = calloc(1, sizeof *b);
    char *p = keel_strdup(path);
    if (b == NULL || p == NULL) {
        free(b); free(p); dlclose(dl);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory loading plugin '%s'", path);
    }
    b->api = api;
    b->dl = dl;
    b->path = p;
    *out = b;
    return KEEL_OK;
}

void keel_backend_free(keel_backend *backend) {
    if (backend == NULL || backend == &g_builtin) return;
    if (backend->dl != NULL) dlclose(backend->dl);
    free(backend->path);
    free(backend);
}

const char *keel_backend_name(const keel_backend *b) { return b && b->api ? b->api->name : NULL; }
const char *keel_backend_version(const keel_backend *b) { return b && b->api ? b->api->version : NULL; }
uint32_t keel_backend_abi_major(const keel_backend *b) { return b && b->api ? b->api->abi_major : 0; }
uint32_t keel_backend_abi_minor(const keel_backend *b) { return b && b->api ? b->api->abi_minor : 0; }

/* ---- models ------------------------------------------------------------------- */

static keel_status read_file(const char *path, uint64_t limit, unsigned char **out, size_t *out_len,
                             keel_error *err) {
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return keel_error_set(err, KEEL_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return keel_error_set(err, KEEL_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return keel_error_set(err, KEEL_ERR_IO, "'%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > limit) {
        close(fd);
        return keel_error_set(err, KEEL_ERR_LIMIT, "'%s' is %lld bytes, over the %llu-byte model size limit",
                              path, (long long)st.st_size, (unsigned long long)limit);
    }
    size_t cap = (size_t)st.st_size;
    unsigned char *buf = malloc(cap > 0 ? cap : 1);
    if (buf == NULL) {
        close(fd);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
    }
    size_t len = 0;
    for (;;) {
        if (len == cap) {
            /* The file grew while we read it: read no more than the limit. */
            unsigned char probe;
            ssize_t extra = read(fd, &probe, 1);
            if (extra == 0) break;
            if (extra < 0 && errno == EINTR) continue;
            free(buf); close(fd);
            if (extra < 0) return keel_error_set(err, KEEL_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
            return keel_error_set(err, KEEL_ERR_IO, "'%s' changed size while being read", path);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf); close(fd);
            return keel_error_set(err, KEEL_ERR_IO, "cannot read '%s': %s", path, strerror(e));
        }
        len += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = len;
    return KEEL_OK;
}

keel_status keel_model_load_bytes(const keel_backend *backend, const void *bytes, size_t len,
                                  const char *source_name, keel_model **out, keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    *out = NULL;
    if (bytes == NULL && len != 0)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "bytes is NULL but len is %zu", len);
    if ((uint64_t)len > KEEL_DEFAULT_MAX_MODEL_BYTES)
        return keel_error_set(err, KEEL_ERR_LIMIT, "model of %zu bytes is over the %llu-byte limit", len,
                              (unsigned long long)KEEL_DEFAULT_MAX_MODEL_BYTES);
    if (backend == NULL) backend = keel_backend_builtin();
    keel_blas_init_once();
    keel_model *m = calloc(1, sizeof *m);
    if (m == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    static const unsigned char empty = 0;
    keel_status st = backend->api->model_load(len ? bytes : &empty, len, source_name, &m->impl, err);
    if (st != KEEL_OK) {
        free(m);
        return st;
    }
    if (m->impl == NULL) {
        free(m);
        return keel_error_set(err, KEEL_ERR_PLUGIN, "backend '%s' returned success but no model",
                              backend->api->name);
    }
    m->backend = backend;
    uint8_t digest[32];
    keel_sha256(len ? bytes : &empty, len, digest);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        m->sha256[2 * i] = hex[digest[i] >> 4];
        m->sha256[2 * i + 1] = hex[digest[i] & 15];
    }
    m->sha256[64] = '\0';
    *out = m;
    return KEEL_OK;
}

keel_status keel_model_load_file(const keel_backend *backend, const char *path, keel_model **out,
                                 keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    *out = NULL;
    if (path == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "path must not be NULL");
    unsigned char *buf = NULL;
    size_t len = 0;
    keel_status st = read_file(path, KEEL_DEFAULT_MAX_MODEL_BYTES, &buf, &len, err);
    if (st != KEEL_OK) return st;
    st = keel_model_load_bytes(backend, buf, len, path, out, err);
    free(buf);
    return st;
}

void keel_model_free(keel_model *model) {
    if (model == NULL) return;
    model->backend->api->model_free(model->impl);
    free(model);
}

const char *keel_model_sha256(const keel_model *m) { return m ? m->sha256 : NULL; }
const keel_backend *keel_model_backend(const keel_model *m) { return m ? m->backend : NULL; }

size_t keel_model_input_count(const keel_model *m) { return m ? m->backend->api->model_input_count(m->impl) : 0; }
size_t keel_model_output_count(const keel_model *m) { return m ? m->backend->api->model_output_count(m->impl) : 0; }

keel_status keel_model_input_info(const keel_model *m, size_t i, keel_tensor_info *out, keel_error *err) {
    if (m == NULL || out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model and out must not be NULL");
    return m->backend->api->model_input_info(m->impl, i, out, err);
}

keel_status keel_model_output_info(const keel_model *m, size_t i, keel_tensor_info *out, keel_error *err) {
    if (m == NULL || out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model and out must not be NULL");
    return m->backend->api->model_output_info(m->impl, i, out, err);
}

size_t keel_model_metadata_count(const keel_model *m) { return m ? m->backend->api->model_metadata_count(m->impl) : 0; }

keel_status keel_model_metadata_entry(const keel_model *m, size_t i, const char **key, const char **value,
                                      keel_error *err) {
    if (m == NULL || key == NULL || value == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model, key and value must not be NULL");
    return m->backend->api->model_metadata_entry(m->impl, i, key, value, err);
}

const char *keel_model_metadata_lookup(const keel_model *m, const char *key) {
    if (m == NULL || key == NULL) return NULL;
    size_t n = keel_model_metadata_count(m);
    for (size_t i = 0; i < n; i++) {
        const char *k = NULL, *v = NULL;
        if (m->backend->api->model_metadata_entry(m->impl, i, &k, &v, NULL) == KEEL_OK && k && strcmp(k, key) == 0)
            return v;
    }
    return NULL;
}

size_t keel_model_property_count(const keel_model *m) {
    return m ? m->backend->api->model_property_count(m->impl) : 0;
}

keel_status keel_model_property_entry(const keel_model *m, size_t i, const char **key, const char **value,
                                      keel_error *err) {
    if (m == NULL || key == NULL || value == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model, key and value must not be NULL");
    return m->backend->api->model_property_entry(m->impl, i, key, value, err);
}

const char *keel_model_property_lookup(const keel_model *m, const char *key) {
    if (m == NULL || key == NULL) return NULL;
    size_t n = keel_model_property_count(m);
    for (size_t i = 0; i < n; i++) {
        const char *k = NULL, *v = NULL;
        if (m->backend->api->model_property_entry(m->impl, i, &k, &v, NULL) == KEEL_OK && k && strcmp(k, key) == 0)
            return v;
    }
    return NULL;
}

size_t keel_model_node_count(const keel_model *m) { return m ? m->backend->api->model_node_count(m->impl) : 0; }

keel_status keel_model_node_info(const keel_model *m, size_t i, const char **name, const char **op_type,
                                 keel_error *err) {
    if (m == NULL || name == NULL || op_type == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model, name and op_type must not be NULL");
    return m->backend->api->model_node_info(m->impl, i, name, op_type, err);
}

uint64_t keel_model_parameter_count(const keel_model *m) { return m ? m->backend->api->model_parameter_count(m->impl) : 0; }

/* ---- sessions ----------------------------------------------------------------- */

keel_status keel_session_create(const keel_model *model, keel_session **out, keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    *out = NULL;
    if (model == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model must not be NULL");
    keel_session *s = calloc(1, sizeof *s);
    if (s == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    keel_status st = model->backend->api->instance_create(model->impl, &s->impl, err);
    if (st != KEEL_OK) {
        free(s);
        return st;
    }
    if (s->impl == NULL) {
        free(s);
        return keel_error_set(err, KEEL_ERR_PLUGIN, "backend returned success but no instance");
    }
    s->model = model;
    *out = s;
    return KEEL_OK;
}

static void unbind(keel_session *s) {
    free(s->bound_in);
    free(s->bound_out);
    free(s->run_out);
    s->bound_in = s->bound_out = s->run_out = NULL;
    s->n_bound_in = s->n_bound_out = 0;
    s->bound = false;
}

void keel_session_free(keel_session *s) {
    if (s == NULL) return;
    s->model->backend->api->instance_free(s->impl);
    unbind(s);
    free(s);
}

keel_status keel_session_run(keel_session *s, const keel_tensor *inputs, size_t n_inputs,
                             keel_tensor *outputs, size_t n_outputs, keel_error *err) {
    if (s == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "session must not be NULL");
    if ((inputs == NULL && n_inputs != 0) || (outputs == NULL && n_outputs != 0))
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "inputs/outputs array is NULL with a non-zero count");
    return s->model->backend->api->instance_run(s->impl, inputs, n_inputs, outputs, n_outputs, err);
}

static void format_shape(const keel_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (uint32_t i = 0; i < t->rank && i < KEEL_MAX_RANK && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static size_t element_count(const keel_tensor *t, bool *ok) {
    size_t count = 1;
    *ok = t->rank <= KEEL_MAX_RANK;
    for (uint32_t k = 0; *ok && k < t->rank; k++)
        *ok = t->shape[k] >= 0 && keel_mul_size(count, (size_t)t->shape[k], &count) && count <= KEEL_MAX_ELEMENTS;
    return *ok ? count : 0;
}

keel_status keel_session_bind(keel_session *s, const keel_tensor *inputs, size_t n_inputs, const keel_tensor *outputs,
                              size_t n_outputs, keel_error *err) {
    if (s == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "session must not be NULL");
    if ((inputs == NULL && n_inputs != 0) || (outputs == NULL && n_outputs != 0))
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "inputs/outputs array is NULL with a non-zero count");
    size_t want_in = keel_model_input_count(s->model), want_out = keel_model_output_count(s->model);
    if (n_inputs != want_in)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "the model takes %zu inputs, %zu were bound", want_in, n_inputs);
    if (n_outputs != want_out)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "the model has %zu outputs, %zu were bound", want_out, n_outputs);
    for (size_t o = 0; o < n_outputs; o++) {
        bool ok;
        size_t count = element_count(&outputs[o], &ok);
        if (!ok)
            return keel_error_set(err, KEEL_ERR_SHAPE, "bound output %zu has an invalid shape", o);
        if (outputs[o].data == NULL && count > 0)
            return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "bound output %zu has NULL data", o);
    }
    unbind(s);
    size_t ni = n_inputs ? n_inputs : 1, no = n_outputs ? n_outputs : 1;
    s->bound_in = calloc(ni, sizeof *s->bound_in);
    s->bound_out = calloc(no, sizeof *s->bound_out);
    s->run_out = calloc(no, sizeof *s->run_out);
    if (s->bound_in == NULL || s->bound_out == NULL || s->run_out == NULL) {
        unbind(s);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory binding a session");
    }
    if (n_inputs) memcpy(s->bound_in, inputs, n_inputs * sizeof *inputs);
    if (n_outputs) memcpy(s->bound_out, outputs, n_outputs * sizeof *outputs);
    s->n_bound_in = n_inputs;
    s->n_bound_out = n_outputs;
    s->bound = true;
    return KEEL_OK;
}

keel_status keel_session_run_bound(keel_session *s, keel_error *err) {
    if (s == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "session must not be NULL");
    if (!s->bound) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "no buffers are bound (keel_session_bind)");
    keel_status st = s->model->backend->api->instance_run(s->impl, s->bound_in, s->n_bound_in, s->run_out,
                                                          s->n_bound_out, err);
    if (st != KEEL_OK) return st;
    for (size_t o = 0; o < s->n_bound_out; o++) {
        const keel_tensor *got = &s->run_out[o], *want = &s->bound_out[o];
        bool same = got->rank == want->rank;
        for (uint32_t k = 0; same && k < got->rank; k++) same = got->shape[k] == want->shape[k];
        if (!same) {
            char gs[160], ws[160];
            format_shape(got, gs, sizeof gs);
            format_shape(want, ws, sizeof ws);
            return keel_error_set(err, KEEL_ERR_SHAPE, "output %zu has shape %s but its bound buffer has shape %s", o, gs, ws);
        }
    }
    for (size_t o = 0; o < s->n_bound_out; o++) {
        bool ok;
        size_t count = element_count(&s->run_out[o], &ok);
        /* the caller gave this buffer as writable output memory (keel_session_bind) */
        if (count) memcpy((float *)(uintptr_t)s->bound_out[o].data, s->run_out[o].data, count * sizeof(float));
    }
    return KEEL_OK;
}

keel_status keel_session_set_memory_limit(keel_session *s, uint64_t bytes, keel_error *err) {
    if (s == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "session must not be NULL");
    if (s->model->backend != keel_backend_builtin())
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "memory limits apply to the built-in backend only");
    keel_onnx_instance_set_memory_limit(s->impl, bytes);
    return KEEL_OK;
}
