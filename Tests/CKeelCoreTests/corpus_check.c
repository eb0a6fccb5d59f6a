/*
 * keel_corpus_check - feed model files (valid or malformed) to the Keel core
 * under AddressSanitizer + UBSan and report what happened to each.
 *
 * Usage:
 *   keel_corpus_check FILE...
 *   keel_corpus_check -          (file paths, one per line, on stdin)
 *
 * For every file it prints one line
 *   PATH<TAB>load<TAB>STATUS<TAB>MESSAGE
 * and, when the model loaded, a second line
 *   PATH<TAB>run<TAB>STATUS<TAB>MESSAGE       (or  PATH<TAB>run<TAB>skipped<TAB>REASON)
 * after creating a session and running it once on inputs built from the
 * declared dims (dynamic dims -> 3), filled with a deterministic pattern.
 * Inputs of more than 1<<20 elements in total are skipped.
 *
 * Exit status: 0 when every file was processed, 2 on a usage or I/O problem
 * of the checker itself. A crash or a sanitizer report ends the process with a
 * non-zero status on its own, which is what the tests look for.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

#define DYNAMIC_DIM 3
#define MAX_TOTAL_ELEMENTS ((int64_t)1 << 20)

/* Print s with tabs, newlines and other control bytes replaced by spaces so
 * that each record stays on one line with exactly four fields. */
static void print_clean(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        fputc((c < 0x20 || c == 0x7f) ? ' ' : c, stdout);
    }
}

static void record(const char *path, const char *phase, const char *status, const char *msg) {
    print_clean(path);
    printf("\t%s\t%s\t", phase, status);
    print_clean(msg ? msg : "");
    fputc('\n', stdout);
}

static void record_status(const char *path, const char *phase, keel_status st, const keel_error *err) {
    char num[16];
    snprintf(num, sizeof num, "%d", (int)st);
    record(path, phase, num, st == KEEL_OK ? "ok" : err->message);
}

/* Run the model once. Returns nothing: everything goes to stdout. */
static void run_once(const char *path, const keel_model *model) {
    keel_error err;
    memset(&err, 0, sizeof err);
    size_t n_in = keel_model_input_count(model);
    size_t n_out = keel_model_output_count(model);
    keel_tensor *inputs = calloc(n_in ? n_in : 1, sizeof *inputs);
    float **buffers = calloc(n_in ? n_in : 1, sizeof *buffers);
    keel_tensor *outputs = calloc(n_out ? n_out : 1, sizeof *outputs);
    keel_session *session = NULL;
    if (!inputs || !buffers || !outputs) {
        record(path, "run", "skipped", "checker out of memory");
        goto done;
    }

    int64_t total = 0;
    for (size_t i = 0; i < n_in; i++) {
        keel_tensor_info info;
        memset(&info, 0, sizeof info);
        keel_status st = keel_model_input_info(model, i, &info, &err);
        if (st != KEEL_OK) {
            record_status(path, "run", st, &err);
            goto done;
        }
        if (info.rank > KEEL_MAX_RANK) {
            record(path, "run", "skipped", "input rank above KEEL_MAX_RANK");
            goto done;
        }
        int64_t count = 1;
        inputs[i].rank = info.rank;
        for (uint32_t d = 0; d < info.rank; d++) {
            int64_t dim = info.dims[d] < 0 ? DYNAMIC_DIM : info.dims[d];
            inputs[i].shape[d] = dim;
            if (dim != 0 && count > MAX_TOTAL_ELEMENTS / dim) {
                count = MAX_TOTAL_ELEMENTS + 1;
            } else {
                count *= dim;
            }
        }
        total += count;
        if (count > MAX_TOTAL_ELEMENTS || total > MAX_TOTAL_ELEMENTS) {
            record(path, "run", "skipped", "inputs larger than 1<<20 elements");
            goto done;
        }
        buffers[i] = malloc((size_t)(count ? count : 1) * sizeof(float));
        if (!buffers[i]) {
            record(path, "run", "skipped", "checker out of memory");
            goto done;
        }
        for (int64_t k = 0; k < count; k++) {
            /* Deterministic, bounded, sign-alternating values; all > -1 so Log and
             * Sqrt see mostly valid inputs but not only. */
            buffers[i][k] = (float)((int)((k * 37 + (int64_t)i * 11) % 17) - 8) / 8.0f;
        }
        inputs[i].data = buffers[i];
    }

    keel_status st = keel_session_create(model, &session, &err);
    if (st != KEEL_OK) {
        record_status(path, "run", st, &err);
        goto done;
    }
    st = keel_session_run(session, inputs, n_in, outputs, n_out, &err);
    if (st == KEEL_OK) {
        /* Touch every output element so ASan checks the views. */
        volatile float sink = 0.0f;
        for (size_t o = 0; o < n_out; o++) {
            int64_t count = 1;
            for (uint32_t d = 0; d < outputs[o].rank && d < KEEL_MAX_RANK; d++) count *= outputs[o].shape[d];
            for (int64_t k = 0; k < count; k++) sink += outputs[o].data[k];
        }
        (void)sink;
    }
    record_status(path, "run", st, &err);

done:
    keel_session_free(session);
    if (buffers) {
        for (size_t i = 0; i < n_in; i++) free(buffers[i]);
    }
    free(buffers);
    free(inputs);
    free(outputs);
}

static void check_file(const char *path) {
    keel_model *model = NULL;
    keel_error err;
    memset(&err, 0, sizeof err);
    keel_status st = keel_model_load_file(NULL, path, &model, &err);
    record_status(path, "load", st, &err);
    if (st == KEEL_OK) {
        if (model == NULL) {
            record(path, "run", "skipped", "load returned OK but no model");
        } else {
            run_once(path, model);
        }
    } else if (model != NULL) {
        record(path, "run", "skipped", "load failed but returned a model (API contract violation)");
    }
    keel_model_free(model);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE...\n       %s -   (paths on stdin, one per line)\n", argv[0], argv[0]);
        return 2;
    }
    if (argc == 2 && strcmp(argv[1], "-") == 0) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, stdin)) != -1) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
            if (len == 0) continue;
            check_file(line);
        }
        free(line);
        if (ferror(stdin)) {
            fprintf(stderr, "keel_corpus_check: error reading stdin\n");
            return 2;
        }
    } else {
        for (int i = 1; i < argc; i++) check_file(argv[i]);
    }
    return fflush(stdout) == 0 ? 0 : 2;
}
