/* Helpers shared by the host and by backends built against keel_backend.h. */
#include "keel_backend.h"

#include <stdarg.h>
#include <stdio.h>

const char *keel_status_name(keel_status status) {
    switch (status) {
    case KEEL_OK: return "ok";
    case KEEL_ERR_INVALID_ARGUMENT: return "invalid argument";
    case KEEL_ERR_IO: return "I/O error";
    case KEEL_ERR_PARSE: return "parse error";
    case KEEL_ERR_INVALID_MODEL: return "invalid model";
    case KEEL_ERR_UNSUPPORTED: return "unsupported";
    case KEEL_ERR_SHAPE: return "shape error";
    case KEEL_ERR_OUT_OF_MEMORY: return "out of memory";
    case KEEL_ERR_LIMIT: return "limit exceeded";
    case KEEL_ERR_VERSION: return "version mismatch";
    case KEEL_ERR_PLUGIN: return "plugin error";
    case KEEL_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

keel_status keel_error_set(keel_error *err, keel_status status, const char *fmt, ...) {
    if (err != NULL) {
        err->status = status;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        if (n < 0) err->message[0] = '\0';
    }
    return status;
}
