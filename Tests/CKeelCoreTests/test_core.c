/* C unit tests of the Keel core, run under AddressSanitizer and UBSan by
 * `make test-c`. Usage: keel_c_tests PLUGIN_DIR (the directory holding
 * libkeel_linear_backend.so and the fake plugins built by the Makefile). */
#include "testlib.h"
#include "../../Sources/CKeelCore/internal.h" /* the packed dense kernels are tested directly */

#include <pthread.h>
#include <unistd.h>

static const char *g_plugin_dir = "build";

/* ---- helpers ------------------------------------------------------------------- */

static keel_model *load(const uint8_t *buf, size_t len, keel_status *st, keel_error *err) {
    keel_model *m = NULL;
    *st = keel_model_load_bytes(NULL, buf, len, "test.onnx", &m, err);
    return m;
}

static keel_tensor tensor2(const float *data, int64_t rows, int64_t cols) {
    keel_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.rank = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

/* y = tanh(relu(x W1 + b1) W2 + b2), F=5, H=7, O=3; built with Gemm. */
enum { F = 5, H = 7, O = 3 };
static float W1[F * H], B1[H], W2[H * O], B2[O];

static uint8_t *build_mlp(size_t *len, int raw) {
    unsigned s = 42;
    for (int i = 0; i < F * H; i++) W1[i] = t_rand(&s);
    for (int i = 0; i < H; i++) B1[i] = t_rand(&s);
    for (int i = 0; i < H * O; i++) W2[i] = t_rand(&s);
    for (int i = 0; i < O; i++) B2[i] = t_rand(&s);
    mb b;
    mb_init(&b, 17);
    int64_t in_dims[2] = {-1, F}, out_dims[2] = {-1, O};
    mb_input(&b, "x", 2, in_dims);
    mb_output(&b, "y", 2, out_dims);
    int64_t d1[2] = {F, H}, d2[1] = {H}, d3[2] = {H, O}, d4[1] = {O};
    mb_init_f(&b, "W1", 2, d1, W1, raw);
    mb_init_f(&b, "B1", 1, d2, B1, raw);
    mb_init_f(&b, "W2", 2, d3, W2, !raw);
    mb_init_f(&b, "B2", 1, d4, B2, !raw);
    mb_node(&b, "Gemm", "fc1", "x,W1,B1", "h");
    mb_node(&b, "Relu", "act1", "h", "r");
    mb_node(&b, "Gemm", "fc2", "r,W2,B2", "z");
    mb_node(&b, "Tanh", "act2", "z", "y");
    mb_meta(&b, "keel.kind", "policy");
    mb_meta(&b, "keel.features", "a,b,c,d,e");
    uint8_t *buf = mb_pack(&b, len);
    mb_free(&b);
    return buf;
}

static void mlp_reference(const float *x, int n, float *y) {
    for (int r = 0; r < n; r++) {
        float h[H];
        for (int j = 0; j < H; j++) {
            double acc = B1[j];
            for (int k = 0; k < F; k++) acc += (double)x[r * F + k] * W1[k * H + j];
            h[j] = acc > 0 ? (float)acc : 0.0f;
        }
        for (int j = 0; j < O; j++) {
            double acc = B2[j];
            for (int k = 0; k < H; k++) acc += (double)h[k] * W2[k * O + j];
            y[r * O + j] = tanhf((float)acc);
        }
    }
}

/* ---- tests ----------------------------------------------------------------------- */

TEST(test_sha256_vectors) {
    static const struct { const char *msg; const char *hex; } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t d[32];
        char hex[65];
        keel_sha256(v[i].msg, strlen(v[i].msg), d);
        for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", d[k]);
        CHECK(strcmp(hex, v[i].hex) == 0, "sha256(%s) = %s", v[i].msg, hex);
    }
    /* one million 'a' (FIPS 180-2 test vector) */
    char *mil = malloc(1000000);
    memset(mil, 'a', 1000000);
    uint8_t d[32];
    char hex[65];
    keel_sha256(mil, 1000000, d);
    for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", d[k]);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "sha256(1M a) = %s", hex);
    free(mil);
}

TEST(test_mlp_dynamic_batch) {
    for (int raw = 0; raw < 2; raw++) {
        size_t len;
        uint8_t *buf = build_mlp(&len, raw);
        keel_error err = {0};
        keel_status st;
        keel_model *m = load(buf, len, &st, &err);
        CHECK_STATUS(st, KEEL_OK, err);
        if (!m) { free(buf); return; }
        CHECK(keel_model_input_count(m) == 1, "inputs");
        CHECK(keel_model_output_count(m) == 1, "outputs");
        keel_tensor_info info;
        CHECK(keel_model_input_info(m, 0, &info, &err) == KEEL_OK, "input info");
        CHECK(strcmp(info.name, "x") == 0 && info.rank == 2 && info.dims[0] == -1 && info.dims[1] == F,
              "input info %s rank %u", info.name, info.rank);
        CHECK(info.dim_params[0] && strcmp(info.dim_params[0], "N") == 0, "dim param");
        CHECK(keel_model_parameter_count(m) == F * H + H + H * O + O, "parameters %llu",
              (unsigned long long)keel_model_parameter_count(m));
        CHECK(keel_model_node_count(m) == 4, "nodes");
        const char *kind = keel_model_metadata_lookup(m, "keel.kind");
        CHECK(kind && strcmp(kind, "policy") == 0, "keel.kind");
        CHECK(keel_model_metadata_lookup(m, "absent") == NULL, "absent metadata");
        const char *producer = keel_model_property_lookup(m, "producer");
        const char *opset = keel_model_property_lookup(m, "opset");
        CHECK(producer && strcmp(producer, "keel-tests") == 0, "producer property %s", producer ? producer : "(null)");
        CHECK(opset && strcmp(opset, "17") == 0, "opset property");
        uint8_t dg[32];
        char hex[65];
        keel_sha256(buf, len, dg);
        for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", dg[k]);
        CHECK(strcmp(keel_model_sha256(m), hex) == 0, "model sha256");

        keel_session *s = NULL;
        CHECK(keel_session_create(m, &s, &err) == KEEL_OK, "session");
        int sizes[] = {1, 4, 33, 4, 0, 2};
        unsigned seed = 7;
        for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
            int n = sizes[t];
            float *x = malloc(sizeof(float) * (size_t)(n ? n : 1) * F);
            float *ref = malloc(sizeof(float) * (size_t)(n ? n : 1) * O);
            for (int i = 0; i < n * F; i++) x[i] = t_rand(&seed) * 3.0f;
            mlp_reference(x, n, ref);
            keel_tensor in = tensor2(x, n, F), out;
            st = keel_session_run(s, &in, 1, &out, 1, &err);
            CHECK_STATUS(st, KEEL_OK, err);
            if (st == KEEL_OK) {
                CHECK(out.rank == 2 && out.shape[0] == n && out.shape[1] == O, "output shape for n=%d", n);
                float maxerr = 0;
                for (int i = 0; i < n * O; i++) {
                    float e = fabsf(out.data[i] - ref[i]);
                    if (e > maxerr) maxerr = e;
                }
                CHECK(maxerr < 1e-5f, "n=%d max error %g", n, maxerr);
            }
            free(x);
            free(ref);
        }
        keel_session_free(s);
        keel_model_free(m);
        free(buf);
    }
}

TEST(test_runtime_shape_errors_keep_session_usable) {
    size_t len;
    uint8_t *buf = build_mlp(&len, 1);
    keel_error err = {0};
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    keel_session *s = NULL;
    keel_session_create(m, &s, &err);
    float x[3 * 6] = {0};
    keel_tensor in = tensor2(x, 3, 6), out;
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_ERR_SHAPE, err);
    CHECK(strstr(err.message, "'x'") && strstr(err.message, "axis 1"), "message names input and axis: %s", err.message);
    in.rank = 3;
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_ERR_SHAPE, err);
    st = keel_session_run(s, &in, 2, &out, 1, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_ARGUMENT, err);
    in = tensor2(NULL, 3, F);
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_ARGUMENT, err);
    in = tensor2(x, 3, F);
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    /* memory limit */
    CHECK(keel_session_set_memory_limit(s, 64, &err) == KEEL_OK, "set limit");
    in = tensor2(x, 2, F);
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_ERR_LIMIT, err);
    keel_session_set_memory_limit(s, 0, &err);
    st = keel_session_run(s, &in, 1, &out, 1, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    keel_session_free(s);
    keel_model_free(m);
    free(buf);
}

TEST(test_null_arguments_never_crash) {
    keel_error err = {0};
    keel_model *m = (keel_model *)1;
    CHECK(keel_model_load_file(NULL, NULL, &m, &err) == KEEL_ERR_INVALID_ARGUMENT && m == NULL, "load_file NULL path");
    CHECK(keel_model_load_file(NULL, "x", NULL, &err) == KEEL_ERR_INVALID_ARGUMENT, "load_file NULL out");
    CHECK(keel_model_load_bytes(NULL, NULL, 5, "x", &m, &err) == KEEL_ERR_INVALID_ARGUMENT, "load_bytes NULL bytes");
    CHECK(keel_model_load_bytes(NULL, NULL, 0, "x", &m, NULL) == KEEL_ERR_PARSE, "empty model");
    CHECK(keel_model_load_file(NULL, "/nonexistent/model.onnx", &m, &err) == KEEL_ERR_IO, "missing file");
    CHECK(strstr(err.message, "/nonexistent/model.onnx") != NULL, "message names the path: %s", err.message);
    CHECK(keel_model_load_file(NULL, "/tmp", &m, &err) == KEEL_ERR_IO, "directory");
    CHECK(keel_model_input_count(NULL) == 0 && keel_model_output_count(NULL) == 0, "counts of NULL");
    CHECK(keel_model_sha256(NULL) == NULL && keel_model_metadata_lookup(NULL, "k") == NULL, "queries of NULL");
    keel_tensor_info info;
    CHECK(keel_model_input_info(NULL, 0, &info, &err) == KEEL_ERR_INVALID_ARGUMENT, "input_info NULL");
    CHECK(keel_session_create(NULL, (keel_session **)&m, &err) == KEEL_ERR_INVALID_ARGUMENT, "session NULL model");
    CHECK(keel_session_run(NULL, NULL, 0, NULL, 0, &err) == KEEL_ERR_INVALID_ARGUMENT, "run NULL");
    CHECK(keel_backend_open(NULL, NULL, &err) == KEEL_ERR_INVALID_ARGUMENT, "open NULL");
    CHECK(keel_blas_set_threads(0, &err) == KEEL_ERR_INVALID_ARGUMENT, "0 threads");
    keel_model_free(NULL);
    keel_session_free(NULL);
    keel_backend_free(NULL);
    keel_backend_free((keel_backend *)keel_backend_builtin());
    CHECK(strcmp(keel_backend_name(keel_backend_builtin()), "onnx-openblas") == 0, "builtin name");
    CHECK(keel_blas_core_name() != NULL && keel_blas_core_name()[0] != '\0', "OpenBLAS core name");
    CHECK(keel_cpu_has_avx512() == 0 || keel_cpu_has_avx512() == 1, "avx512 flag");
}

/* Build a one-node model around op; returns packed bytes. */
static uint8_t *one_node(const char *op, size_t *len, int64_t opset) {
    mb b;
    mb_init(&b, opset);
    int64_t d[2] = {-1, 4};
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    mb_node(&b, op, "the_node", "x", "y");
    uint8_t *buf = mb_pack(&b, len);
    mb_free(&b);
    return buf;
}

TEST(test_validation_errors) {
    keel_error err = {0};
    keel_status st;
    size_t len;
    uint8_t *buf;
    keel_model *m;

    buf = one_node("Conv", &len, 17);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_UNSUPPORTED, err);
    CHECK(strstr(err.message, "Conv") && strstr(err.message, "the_node"), "names op and node: %s", err.message);
    keel_model_free(m);
    free(buf);

    buf = one_node("Relu", &len, 99);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_UNSUPPORTED, err);
    CHECK(strstr(err.message, "opset 99") != NULL, "names opset: %s", err.message);
    keel_model_free(m);
    free(buf);

    buf = one_node("Relu", &len, 0); /* no opset import */
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    keel_model_free(m);
    free(buf);

    /* cycle: a = Relu(b), b = Relu(a) */
    mb b;
    mb_init(&b, 17);
    int64_t d[2] = {-1, 4};
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    mb_node(&b, "Add", "loop_a", "x,b", "a");
    mb_node(&b, "Relu", "loop_b", "a", "b");
    mb_node(&b, "Identity", "out", "b", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "cycle") && strstr(err.message, "loop_"), "names the cycle: %s", err.message);
    free(buf);

    /* dangling input */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    mb_node(&b, "Add", "adder", "x,ghost", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "ghost") && strstr(err.message, "adder"), "names tensor: %s", err.message);
    free(buf);

    /* duplicate output names */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    mb_node(&b, "Relu", "r1", "x", "y");
    mb_node(&b, "Relu", "r2", "x", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "defined twice") != NULL, "duplicate: %s", err.message);
    free(buf);

    /* static shape mismatch caught at load: Gemm with wrong K */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    float w[3 * 4] = {0};
    int64_t wd[2] = {3, 4};
    mb_init_f(&b, "W", 2, wd, w, 1);
    mb_node(&b, "Gemm", "bad_gemm", "x,W", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "bad_gemm") != NULL, "names node: %s", err.message);
    free(buf);

    /* raw_data size mismatch */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    Onnx__TensorProto *t = mb_init_f(&b, "W", 2, wd, w, 1);
    t->raw_data.len -= 4;
    mb_node(&b, "Add", "a", "x,W", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "'W'") && strstr(err.message, "raw_data"), "names tensor: %s", err.message);
    free(buf);

    /* huge declared dims without data */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    t = mb_init_f(&b, "W", 0, huge, w, 1);
    t->n_dims = 2;
    t->dims = huge;
    mb_node(&b, "Add", "a", "x,W", "y");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_LIMIT, err);
    free(buf);

    /* keel.features count mismatch */
    mb_init(&b, 17);
    mb_input(&b, "x", 2, d);
    mb_output(&b, "y", 2, d);
    mb_node(&b, "Relu", "r", "x", "y");
    mb_meta(&b, "keel.features", "a,b,c");
    buf = mb_pack(&b, &len);
    mb_free(&b);
    m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_ERR_INVALID_MODEL, err);
    CHECK(strstr(err.message, "keel.features") != NULL, "features: %s", err.message);
    free(buf);
}

TEST(test_ops_values) {
    /* Reshape(-1,0) -> Transpose -> ReduceSum(axes input) -> Softmax, checked by hand. */
    mb b;
    mb_init(&b, 17);
    int64_t din[2] = {2, 3}, dout[1] = {3};
    mb_input(&b, "x", 2, din);
    mb_output(&b, "y", 1, dout);
    mb_output(&b, "c", 2, (int64_t[]){2, 6});
    int64_t shp[2] = {3, -1};
    mb_init_i64(&b, "shape", 2, shp);
    int64_t axes[1] = {1};
    mb_init_i64(&b, "axes", 1, axes);
    mb_node(&b, "Reshape", "reshape", "x,shape", "r");            /* [3,2] */
    Onnx__NodeProto *tr = mb_node(&b, "Transpose", "tr", "r", "t"); /* [2,3] */
    mb_attr_ints(&b, tr, "perm", 2, (int64_t[]){1, 0});
    Onnx__NodeProto *rs = mb_node(&b, "ReduceSum", "rs", "t,axes", "s"); /* [2,1] */
    (void)rs;
    Onnx__NodeProto *fl = mb_node(&b, "Flatten", "fl", "s", "f"); /* [2,1] */
    mb_attr_i(&b, fl, "axis", 0);                                  /* [1,2] */
    Onnx__NodeProto *cc = mb_node(&b, "Concat", "cc", "t,t", "c");
    mb_attr_i(&b, cc, "axis", 1);
    Onnx__NodeProto *sm = mb_node(&b, "Softmax", "sm", "x", "sx");
    mb_attr_i(&b, sm, "axis", 0);
    mb_node(&b, "ReduceMean", "rm", "sx", "y0"); /* opset 17: attribute axes, none = all */
    Onnx__NodeProto *rm2 = mb_node(&b, "ReduceMean", "rm2", "sx", "y");
    mb_attr_ints(&b, rm2, "axes", 1, (int64_t[]){0});
    mb_attr_i(&b, rm2, "keepdims", 0);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    mb_free(&b);
    keel_error err = {0};
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    free(buf);
    if (!m) return;
    keel_session *s;
    keel_session_create(m, &s, &err);
    float x[6] = {1, 2, 3, 4, 5, 6};
    keel_tensor in = tensor2(x, 2, 3), out[2];
    st = keel_session_run(s, &in, 1, out, 2, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    if (st == KEEL_OK) {
        /* softmax over axis 0 of [[1,2,3],[4,5,6]]: each column is softmax(a, a+3); mean over axis 0 = 0.5 */
        CHECK(out[0].rank == 1 && out[0].shape[0] == 3, "y shape");
        for (int i = 0; i < 3; i++) CHECK(fabsf(out[0].data[i] - 0.5f) < 1e-6f, "y[%d]=%g", i, out[0].data[i]);
        /* r = [[1,2],[3,4],[5,6]], t = [[1,3,5],[2,4,6]], c = [t | t] */
        float want[12] = {1, 3, 5, 1, 3, 5, 2, 4, 6, 2, 4, 6};
        CHECK(out[1].rank == 2 && out[1].shape[0] == 2 && out[1].shape[1] == 6, "c shape");
        for (int i = 0; i < 12; i++) CHECK(out[1].data[i] == want[i], "c[%d]=%g want %g", i, out[1].data[i], want[i]);
    }
    keel_session_free(s);
    keel_model_free(m);
}

TEST(test_broadcast_general) {
    mb b;
    mb_init(&b, 17);
    mb_input(&b, "a", 2, (int64_t[]){3, 1});
    mb_input(&b, "b", 3, (int64_t[]){2, 1, 4});
    mb_output(&b, "y", 3, (int64_t[]){2, 3, 4});
    mb_node(&b, "Sub", "sub", "a,b", "y");
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    mb_free(&b);
    keel_error err = {0};
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    free(buf);
    if (!m) return;
    keel_session *s;
    keel_session_create(m, &s, &err);
    float a[3] = {10, 20, 30}, bv[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    keel_tensor in[2], out;
    memset(in, 0, sizeof in);
    in[0].data = a; in[0].rank = 2; in[0].shape[0] = 3; in[0].shape[1] = 1;
    in[1].data = bv; in[1].rank = 3; in[1].shape[0] = 2; in[1].shape[1] = 1; in[1].shape[2] = 4;
    st = keel_session_run(s, in, 2, &out, 1, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    if (st == KEEL_OK) {
        int bad = 0;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 4; k++)
                    if (out.data[(i * 3 + j) * 4 + k] != a[j] - bv[i * 4 + k]) bad++;
        CHECK(bad == 0, "%d wrong elements", bad);
    }
    keel_session_free(s);
    keel_model_free(m);
}

TEST(test_truncations_never_crash) {
    size_t len;
    uint8_t *buf = build_mlp(&len, 1);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        keel_error err = {0};
        keel_model *m = NULL;
        keel_status st = keel_model_load_bytes(NULL, copy, cut, "cut", &m, &err);
        if (st == KEEL_OK) {
            accepted++;
            keel_model_free(m);
        } else {
            CHECK(err.message[0] != '\0', "cut at %zu gave status %d with no message", cut, st);
        }
        free(copy);
    }
    /* Truncating the metadata at the very end may still leave a valid model, but the
     * overwhelming majority of cut points must be rejected. */
    CHECK(accepted < 5, "%d truncations were accepted", accepted);
    free(buf);
}

typedef struct thread_arg { const keel_model *m; int ok; } thread_arg;

static void *worker(void *p) {
    thread_arg *a = p;
    keel_session *s;
    keel_error err;
    if (keel_session_create(a->m, &s, &err) != KEEL_OK) return NULL;
    float x[16 * F];
    float ref[16 * O];
    unsigned seed = 99;
    a->ok = 1;
    for (int it = 0; it < 200; it++) {
        int n = 1 + it % 16;
        for (int i = 0; i < n * F; i++) x[i] = t_rand(&seed);
        mlp_reference(x, n, ref);
        keel_tensor in = tensor2(x, n, F), out;
        if (keel_session_run(s, &in, 1, &out, 1, &err) != KEEL_OK) { a->ok = 0; break; }
        for (int i = 0; i < n * O; i++)
            if (fabsf(out.data[i] - ref[i]) > 1e-5f) { a->ok = 0; break; }
    }
    keel_session_free(s);
    return NULL;
}

TEST(test_concurrent_sessions_share_a_model) {
    size_t len;
    uint8_t *buf = build_mlp(&len, 0);
    keel_error err;
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    free(buf);
    if (!m) { CHECK(0, "load"); return; }
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) { args[i].m = m; args[i].ok = 0; pthread_create(&th[i], NULL, worker, &args[i]); }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) CHECK(args[i].ok, "thread %d", i);
    keel_model_free(m);
}

static void plugin_path(char *buf, size_t cap, const char *file) { snprintf(buf, cap, "%s/%s", g_plugin_dir, file); }

TEST(test_plugin_linear_backend) {
    char path[1024];
    plugin_path(path, sizeof path, "libkeel_linear_backend.so");
    keel_backend *be = NULL;
    keel_error err = {0};
    keel_status st = keel_backend_open(path, &be, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    if (!be) return;
    CHECK(strcmp(keel_backend_name(be), "keel-linear") == 0, "name %s", keel_backend_name(be));
    CHECK(keel_backend_abi_major(be) == KEEL_BACKEND_ABI_MAJOR, "abi major");
    const char *text =
        "keel-linear 1\n"
        "features: a,b,c\n"
        "outputs: s,t\n"
        "weights:\n"
        "1 2 3\n"
        "-1 0 0.5\n"
        "bias: 0.5 -2\n"
        "meta keel.kind policy\n";
    keel_model *m = NULL;
    st = keel_model_load_bytes(be, text, strlen(text), "linear.txt", &m, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    if (m) {
        CHECK(keel_model_backend(m) == be, "backend of model");
        const char *kind = keel_model_metadata_lookup(m, "keel.kind");
        CHECK(kind && strcmp(kind, "policy") == 0, "plugin metadata");
        const char *fmt = keel_model_property_lookup(m, "format");
        CHECK(fmt && strcmp(fmt, "keel-linear 1") == 0, "plugin property");
        keel_session *s;
        st = keel_session_create(m, &s, &err);
        CHECK_STATUS(st, KEEL_OK, err);
        float x[6] = {1, 1, 1, 2, 0, -2};
        keel_tensor in = tensor2(x, 2, 3), out;
        st = keel_session_run(s, &in, 1, &out, 1, &err);
        CHECK_STATUS(st, KEEL_OK, err);
        if (st == KEEL_OK) {
            float want[4] = {6.5f, -2.5f, -3.5f, -5.0f};
            CHECK(out.rank == 2 && out.shape[0] == 2 && out.shape[1] == 2, "shape");
            for (int i = 0; i < 4; i++) CHECK(fabsf(out.data[i] - want[i]) < 1e-6f, "out[%d]=%g", i, out.data[i]);
        }
        CHECK(keel_session_set_memory_limit(s, 1, &err) == KEEL_ERR_UNSUPPORTED, "limit on plugin");
        keel_session_free(s);
        keel_model_free(m);
    }
    st = keel_model_load_bytes(be, "keel-linear 1\nfeatures: a\n", 24, "bad.txt", &m, &err);
    CHECK(st == KEEL_ERR_PARSE, "bad linear file: %d %s", st, err.message);
    keel_backend_free(be);
}

TEST(test_plugin_version_checks) {
    struct { const char *file; keel_status want; const char *needle; } cases[] = {
        {"libkeel_fake_major.so", KEEL_ERR_VERSION, "ABI 2.0"},
        {"libkeel_fake_minor.so", KEEL_ERR_VERSION, "newer"},
        {"libkeel_fake_null.so", KEEL_ERR_PLUGIN, "NULL"},
        {"libkeel_fake_noentry.so", KEEL_ERR_PLUGIN, "does not export"},
        {"libkeel_does_not_exist.so", KEEL_ERR_PLUGIN, "cannot load"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1024];
        plugin_path(path, sizeof path, cases[i].file);
        keel_backend *be = NULL;
        keel_error err = {0};
        keel_status st = keel_backend_open(path, &be, &err);
        CHECK(st == cases[i].want && be == NULL, "%s: status %d: %s", cases[i].file, st, err.message);
        CHECK(strstr(err.message, cases[i].needle) != NULL, "%s: message '%s' lacks '%s'", cases[i].file, err.message,
              cases[i].needle);
    }
}

/* The packed dense kernel against a double-precision reference, over shapes
 * that hit every tile height (1..6 rows), every panel width (1..4 vectors, full
 * and masked), several panels, odd K, and n == 1; with and without bias,
 * alpha, beta, ReLU and a transposed B. y is allocated exactly, so a store past
 * its end is an AddressSanitizer error. */
static void dense_sweep(const char *isa) {
    const size_t ms[] = {0, 1, 2, 3, 5, 6, 7, 11, 12, 13, 100};
    const size_t ks[] = {1, 3, 16, 17, 32, 64, 65};
    const size_t ns[] = {1, 2, 15, 16, 17, 33, 48, 64, 65, 127, 128, 130};
    unsigned seed = 99;
    int cases = 0;
    for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++)
            for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
                size_t m = ms[a], k = ks[b], n = ns[c];
                int trans_b = (int)((a + b + c) % 2);
                int bias_kind = (int)((a * 7 + b * 3 + c) % 3); /* none, scalar, row */
                int relu = (int)((a + c) % 2);
                float alpha = (b % 3 == 0) ? 0.5f : 1.0f, beta = (c % 4 == 0) ? 2.0f : 1.0f;
                float *A = malloc(sizeof(float) * (m * k + 1)), *B = malloc(sizeof(float) * k * n);
                float *C = malloc(sizeof(float) * n), *Y = malloc(sizeof(float) * (m * n + 1));
                for (size_t i = 0; i < m * k; i++) A[i] = t_rand(&seed);
                for (size_t i = 0; i < k * n; i++) B[i] = t_rand(&seed);
                for (size_t i = 0; i < n; i++) C[i] = t_rand(&seed);
                keel_dense *d = NULL;
                keel_status st = keel_dense_create(k, n, B, trans_b, alpha, bias_kind ? C : NULL,
                                                   bias_kind == 1 ? 1 : n, beta, relu, &d, NULL);
                CHECK(st == KEEL_OK && d != NULL, "%s: create m=%zu k=%zu n=%zu", isa, m, k, n);
                if (d == NULL) { free(A); free(B); free(C); free(Y); continue; }
                keel_dense_run(d, m, A, Y);
                double worst = 0.0;
                for (size_t i = 0; i < m; i++)
                    for (size_t j = 0; j < n; j++) {
                        double acc = 0.0, mag = 0.0;
                        for (size_t p = 0; p < k; p++) {
                            double t = (double)A[i * k + p] * (trans_b ? B[j * k + p] : B[p * n + j]);
                            acc += t;
                            mag += fabs(t);
                        }
                        double want = alpha * acc + (bias_kind ? beta * (double)C[bias_kind == 1 ? 0 : j] : 0.0);
                        if (relu && want < 0.0) want = 0.0;
                        double e = fabs(Y[i * n + j] - want) / (alpha * mag + fabs(beta * C[0]) + fabs(beta * C[j]) + 1e-6);
                        if (e > worst) worst = e;
                    }
                CHECK(worst < 1e-6, "%s: m=%zu k=%zu n=%zu trans_b=%d bias=%d relu=%d: relative error %g", isa, m,
                      k, n, trans_b, bias_kind, relu, worst);
                keel_dense_free(d);
                free(A); free(B); free(C); free(Y);
                cases++;
            }
    CHECK(cases == 11 * 7 * 12, "%s: ran %d cases", isa, cases);

    /* ReLU keeps NaN (as the reference Relu does) and clamps -inf */
    float Bv[16 * 2], Av[2] = {NAN, -INFINITY}, Yv[16 * 2];
    for (int i = 0; i < 32; i++) Bv[i] = 1.0f;
    keel_dense *d = NULL;
    CHECK(keel_dense_create(1, 16, Bv, 0, 1.0f, NULL, 0, 0.0f, 1, &d, NULL) == KEEL_OK, "create 1x16");
    if (d) {
        keel_dense_run(d, 2, Av, Yv);
        CHECK(isnan(Yv[0]) && isnan(Yv[15]) && Yv[16] == 0.0f && Yv[31] == 0.0f, "%s: relu of NaN / -inf: %g %g", isa,
              Yv[0], Yv[16]);
        keel_dense_free(d);
    }
    /* out of range: refused, not packed */
    CHECK(keel_dense_create(KEEL_DENSE_MAX_DIM + 1, 1, Bv, 0, 1.0f, NULL, 0, 0.0f, 0, &d, NULL) == KEEL_ERR_UNSUPPORTED &&
          d == NULL, "k beyond the range");
    CHECK(keel_dense_create(1, 0, Bv, 0, 1.0f, NULL, 0, 0.0f, 0, &d, NULL) == KEEL_ERR_UNSUPPORTED, "n = 0");
}

/* The sweep for every kernel set this CPU has: AVX-512 (the default where it
 * exists) and AVX2 (KEEL_GEMM=avx2). KEEL_GEMM=blas turns packing off. */
TEST(test_dense_kernel_matches_reference) {
    const char *saved = getenv("KEEL_GEMM");
    char *keep = saved ? strdup(saved) : NULL;
    int swept = 0;
    const char *modes[] = {NULL, "avx2"};
    for (int i = 0; i < 2; i++) {
        if (modes[i]) setenv("KEEL_GEMM", modes[i], 1); else unsetenv("KEEL_GEMM");
        const char *isa = keel_dense_isa_name();
        if (isa == NULL || (i == 0 && strcmp(isa, "AVX-512") != 0)) continue;
        dense_sweep(isa);
        swept++;
    }
    setenv("KEEL_GEMM", "blas", 1);
    keel_dense *d = NULL;
    float one = 1.0f;
    CHECK(keel_dense_create(1, 1, &one, 0, 1.0f, NULL, 0, 0.0f, 0, &d, NULL) == KEEL_ERR_UNSUPPORTED && d == NULL,
          "KEEL_GEMM=blas: nothing is packed");
    if (keep) setenv("KEEL_GEMM", keep, 1); else unsetenv("KEEL_GEMM");
    free(keep);
    if (swept == 0) printf("  (no packed kernels on this CPU: AVX-512F or AVX2+FMA needed)\n");
}

/* A whole model through the packed kernels and through cblas_sgemm
 * (KEEL_GEMM=blas at load) gives the same outputs. */
TEST(test_dense_and_blas_paths_agree) {
    size_t len;
    uint8_t *buf = build_mlp(&len, 1);
    keel_error err = {0};
    keel_status st;
    const char *saved = getenv("KEEL_GEMM");
    char *keep = saved ? strdup(saved) : NULL;
    setenv("KEEL_GEMM", "blas", 1);
    CHECK(keel_dense_off_reason() != NULL && keel_dense_isa_name() == NULL, "KEEL_GEMM=blas turns the packed kernels off");
    keel_model *mb = load(buf, len, &st, &err);
    if (keep) setenv("KEEL_GEMM", keep, 1); else unsetenv("KEEL_GEMM");
    free(keep);
    keel_model *md = load(buf, len, &st, &err);
    CHECK(mb && md, "both models load");
    keel_session *sb = NULL, *sd = NULL;
    if (mb && md && keel_session_create(mb, &sb, &err) == KEEL_OK && keel_session_create(md, &sd, &err) == KEEL_OK) {
        unsigned seed = 5;
        for (int n = 1; n <= 40; n += 13) {
            float *x = malloc(sizeof(float) * (size_t)n * F);
            for (int i = 0; i < n * F; i++) x[i] = t_rand(&seed) * 2.0f;
            keel_tensor in = tensor2(x, n, F), ob, od;
            CHECK(keel_session_run(sb, &in, 1, &ob, 1, &err) == KEEL_OK, "blas run");
            CHECK(keel_session_run(sd, &in, 1, &od, 1, &err) == KEEL_OK, "dense run");
            float worst = 0.0f;
            for (int i = 0; i < n * O; i++) worst = fmaxf(worst, fabsf(ob.data[i] - od.data[i]));
            CHECK(worst < 1e-5f, "n=%d: paths differ by %g", n, worst);
            free(x);
        }
    }
    keel_session_free(sb);
    keel_session_free(sd);
    keel_model_free(mb);
    keel_model_free(md);
    free(buf);
}

/* One 256x256 initializer shared by a chain of 100 Gemm nodes: packing stays
 * within its budget (about 17 copies), the other layers run through
 * cblas_sgemm, and the chain of identities returns its input exactly. */
TEST(test_dense_packing_budget_shared_weights) {
    enum { D = 256, LAYERS = 100, ROWS = 7 };
    float *eye = calloc((size_t)D * D, sizeof(float));
    for (int i = 0; i < D; i++) eye[i * D + i] = 1.0f;
    mb b;
    mb_init(&b, 13);
    mb_input(&b, "x", 2, (int64_t[]){-1, D});
    mb_output(&b, "h100", 2, (int64_t[]){-1, D});
    mb_init_f(&b, "I", 2, (int64_t[]){D, D}, eye, 1);
    for (int l = 0; l < LAYERS; l++) {
        char name[32], io[64];
        snprintf(name, sizeof name, "g%d", l);
        if (l == 0) snprintf(io, sizeof io, "x,I");
        else snprintf(io, sizeof io, "h%d,I", l);
        char out[16];
        snprintf(out, sizeof out, "h%d", l + 1);
        mb_node(&b, "Gemm", name, io, out);
    }
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    mb_free(&b);
    free(eye);
    keel_error err = {0};
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    CHECK_STATUS(st, KEEL_OK, err);
    keel_session *s = NULL;
    if (m && keel_session_create(m, &s, &err) == KEEL_OK) {
        float x[ROWS * D];
        unsigned seed = 11;
        for (int i = 0; i < ROWS * D; i++) x[i] = t_rand(&seed);
        keel_tensor in = tensor2(x, ROWS, D), out;
        CHECK_STATUS(keel_session_run(s, &in, 1, &out, 1, &err), KEEL_OK, err);
        int differ = 0;
        for (int i = 0; i < ROWS * D; i++) differ += out.data[i] != x[i];
        CHECK(differ == 0, "%d outputs differ from the input after 100 identity layers", differ);
    }
    keel_session_free(s);
    keel_model_free(m);
    free(buf);
}

/* keel_session_bind / keel_session_run_bound: outputs land in the caller's
 * buffer, the bound input is re-read on every run, and every misuse is a
 * status with a message. */
TEST(test_session_binding) {
    size_t len;
    uint8_t *buf = build_mlp(&len, 0);
    keel_error err = {0};
    keel_status st;
    keel_model *m = load(buf, len, &st, &err);
    keel_session *s = NULL;
    CHECK(m && keel_session_create(m, &s, &err) == KEEL_OK, "session");
    if (!s) { keel_model_free(m); free(buf); return; }
    enum { N = 9 };
    float x[N * F], y[N * O], ref[N * O];
    unsigned seed = 3;
    for (int i = 0; i < N * F; i++) x[i] = t_rand(&seed);
    keel_tensor in = tensor2(x, N, F), out = tensor2(y, N, O);
    CHECK(keel_session_run_bound(s, &err) == KEEL_ERR_INVALID_ARGUMENT && strstr(err.message, "bound"),
          "run before bind: %s", err.message);
    CHECK(keel_session_run_bound(NULL, &err) == KEEL_ERR_INVALID_ARGUMENT, "NULL session");
    CHECK(keel_session_bind(s, &in, 2, &out, 1, &err) == KEEL_ERR_INVALID_ARGUMENT, "wrong input count");
    CHECK(keel_session_bind(s, &in, 1, NULL, 1, &err) == KEEL_ERR_INVALID_ARGUMENT, "NULL outputs");
    keel_tensor nodata = tensor2(NULL, N, O);
    CHECK(keel_session_bind(s, &in, 1, &nodata, 1, &err) == KEEL_ERR_INVALID_ARGUMENT, "NULL output data");
    CHECK_STATUS(keel_session_bind(s, &in, 1, &out, 1, &err), KEEL_OK, err);
    for (int round = 0; round < 2; round++) {
        CHECK_STATUS(keel_session_run_bound(s, &err), KEEL_OK, err);
        mlp_reference(x, N, ref);
        float worst = 0.0f;
        for (int i = 0; i < N * O; i++) worst = fmaxf(worst, fabsf(y[i] - ref[i]));
        CHECK(worst < 1e-5f, "round %d: bound output differs by %g", round, worst);
        for (int i = 0; i < N * F; i++) x[i] = -x[i]; /* new values in the bound buffer */
    }
    /* a bound output of the wrong shape: an error naming both shapes, buffer untouched */
    float small[2 * O];
    for (int i = 0; i < 2 * O; i++) small[i] = 42.0f;
    keel_tensor wrong = tensor2(small, 2, O);
    CHECK_STATUS(keel_session_bind(s, &in, 1, &wrong, 1, &err), KEEL_OK, err);
    CHECK(keel_session_run_bound(s, &err) == KEEL_ERR_SHAPE && strstr(err.message, "[9,3]") && strstr(err.message, "[2,3]"),
          "shape mismatch: %s", err.message);
    CHECK(small[0] == 42.0f && small[2 * O - 1] == 42.0f, "buffer untouched");
    keel_session_free(s); /* frees the binding */
    keel_model_free(m);
    free(buf);
}

int main(int argc, char **argv) {
    if (argc > 1) g_plugin_dir = argv[1];
    RUN(test_sha256_vectors);
    RUN(test_mlp_dynamic_batch);
    RUN(test_runtime_shape_errors_keep_session_usable);
    RUN(test_null_arguments_never_crash);
    RUN(test_validation_errors);
    RUN(test_ops_values);
    RUN(test_broadcast_general);
    RUN(test_truncations_never_crash);
    RUN(test_concurrent_sessions_share_a_model);
    RUN(test_plugin_linear_backend);
    RUN(test_plugin_version_checks);
    RUN(test_dense_kernel_matches_reference);
    RUN(test_dense_and_blas_paths_agree);
    RUN(test_dense_packing_budget_shared_weights);
    RUN(test_session_binding);
    return t_report();
}
