/*
 * keel_linear_backend.h - the "keel-linear" example plugin backend.
 *
 * The library exports exactly one symbol, the plugin entry point of
 * keel_backend.h. Hosts normally do not include this header: they dlopen the
 * library and look the entry point up by name (keel_backend_open does both).
 * The file format is documented in docs/PLUGINS.md.
 */
#ifndef KEEL_LINEAR_BACKEND_H
#define KEEL_LINEAR_BACKEND_H

#include "keel_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns the keel-linear function table (ABI 1.0) for any host with ABI major
 * 1, NULL otherwise. Static storage; thread-safe. */
__attribute__((visibility("default")))
const keel_backend_api *keel_backend_get_api(uint32_t host_abi_major, uint32_t host_abi_minor);

#ifdef __cplusplus
}
#endif
#endif /* KEEL_LINEAR_BACKEND_H */
