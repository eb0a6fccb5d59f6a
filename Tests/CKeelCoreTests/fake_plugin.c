/* Deliberately broken plugins for the host's ABI checks, one per FAKE_MODE:
 *   1  built for a different major version (2.0)
 *   2  built for a newer minor version than the host
 *   3  leaves a required entry NULL
 *   4  exports no entry point at all */
#include "keel_backend.h"

#if FAKE_MODE != 4
static keel_status fake_load(const void *b, size_t n, const char *s, void **out, keel_error *err) {
    (void)b; (void)n; (void)s; (void)out;
    return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "fake");
}

static keel_backend_api api = {
    .abi_major = FAKE_MODE == 1 ? KEEL_BACKEND_ABI_MAJOR + 1 : KEEL_BACKEND_ABI_MAJOR,
    .abi_minor = FAKE_MODE == 2 ? KEEL_BACKEND_ABI_MINOR + 1 : 0,
    .struct_size = sizeof(keel_backend_api),
    .name = "fake",
    .version = "0",
    .model_load = fake_load, /* everything else NULL: only mode 3 gets that far */
};

__attribute__((visibility("default"))) const keel_backend_api *keel_backend_get_api(uint32_t major, uint32_t minor) {
    (void)major; (void)minor;
    return &api;
}
#else
__attribute__((visibility("default"))) int keel_not_the_entry_point(void) { return 0; }
#endif
