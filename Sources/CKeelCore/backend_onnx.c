/* The built-in ONNX/OpenBLAS backend, exposed through the same plugin ABI
 * (keel_backend.h) that external backends implement. */
#include "internal.h"

#include <stdlib.h>

static keel_status onnx_model_load(const void *bytes, size_t len, const char *source, void **out, keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    keel_onnx_model *m = NULL;
    keel_status st = keel_onnx_model_load(bytes, len, source, &m, err);
    *out = m;
    return st;
}

static void onnx_model_free(void *m) { keel_onnx_model_free(m); }
static size_t onnx_input_count(const void *m) { return ((const keel_onnx_model *)m)->n_inputs; }
static size_t onnx_output_count(const void *m) { return ((const keel_onnx_model *)m)->n_outputs; }

static keel_status onnx_input_info(const void *mp, size_t i, keel_tensor_info *out, keel_error *err) {
    const keel_onnx_model *m = mp;
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    if (i >= m->n_inputs) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "input index %zu out of range (%zu inputs)", i, m->n_inputs);
    *out = m->input_info[i];
    return KEEL_OK;
}

static keel_status onnx_output_info(const void *mp, size_t i, keel_tensor_info *out, keel_error *err) {
    const keel_onnx_model *m = mp;
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    if (i >= m->n_outputs) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "output index %zu out of range (%zu outputs)", i, m->n_outputs);
    *out = m->output_info[i];
    return KEEL_OK;
}

static size_t onnx_metadata_count(const void *m) { return ((const keel_onnx_model *)m)->n_meta; }

static keel_status onnx_metadata_entry(const void *mp, size_t i, const char **key, const char **value, keel_error *err) {
    const keel_onnx_model *m = mp;
    if (key == NULL || value == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "key and value must not be NULL");
    if (i >= m->n_meta) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "metadata index %zu out of range (%zu entries)", i, m->n_meta);
    *key = m->meta[i].key;
    *value = m->meta[i].value;
    return KEEL_OK;
}

static size_t onnx_property_count(const void *m) { return ((const keel_onnx_model *)m)->n_props; }

static keel_status onnx_property_entry(const void *mp, size_t i, const char **key, const char **value, keel_error *err) {
    const keel_onnx_model *m = mp;
    if (key == NULL || value == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "key and value must not be NULL");
    if (i >= m->n_props) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "property index %zu out of range (%zu entries)", i, m->n_props);
    *key = m->props[i].key;
    *value = m->props[i].value;
    return KEEL_OK;
}

static size_t onnx_node_count(const void *m) { return ((const keel_onnx_model *)m)->n_nodes; }

static keel_status onnx_node_info(const void *mp, size_t i, const char **name, const char **op_type, keel_error *err) {
    const keel_onnx_model *m = mp;
    if (name == NULL || op_type == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "name and op_type must not be NULL");
    if (i >= m->n_nodes) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "node index %zu out of range (%zu nodes)", i, m->n_nodes);
    *name = m->nodes[i].name;
    *op_type = m->nodes[i].op_type;
    return KEEL_OK;
}

static uint64_t onnx_parameter_count(const void *m) { return ((const keel_onnx_model *)m)->parameter_count; }

static keel_status onnx_instance_create(const void *m, void **out, keel_error *err) {
    if (out == NULL) return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "out must not be NULL");
    keel_onnx_session *s = NULL;
    keel_status st = keel_onnx_session_create(m, &s, err);
    *out = s;
    return st;
}

static void onnx_instance_free(void *s) { keel_onnx_session_free(s); }

static keel_status onnx_instance_run(void *s, const keel_tensor *in, size_t n_in, keel_tensor *out, size_t n_out, keel_error *err) {
    return keel_onnx_session_run(s, in, n_in, out, n_out, err);
}

void keel_onnx_instance_set_memory_limit(void *instance, uint64_t bytes) {
    ((keel_onnx_session *)instance)->memory_limit = bytes;
}

static const keel_backend_api ONNX_API = {
    .abi_major = KEEL_BACKEND_ABI_MAJOR,
    .abi_minor = KEEL_BACKEND_ABI_MINOR,
    .struct_size = sizeof(keel_backend_api),
    .name = "onnx-openblas",
    .version = "0.1.0",
    .model_load = onnx_model_load,
    .model_free = onnx_model_free,
    .model_input_count = onnx_input_count,
    .model_output_count = onnx_output_count,
    .model_input_info = onnx_input_info,
    .model_output_info = onnx_output_info,
    .model_metadata_count = onnx_metadata_count,
    .model_metadata_entry = onnx_metadata_entry,
    .model_node_count = onnx_node_count,
    .model_node_info = onnx_node_info,
    .model_parameter_count = onnx_parameter_count,
    .instance_create = onnx_instance_create,
    .instance_free = onnx_instance_free,
    .instance_run = onnx_instance_run,
    .model_property_count = onnx_property_count,
    .model_property_entry = onnx_property_entry,
};

const keel_backend_api *keel_onnx_backend_api(void) { return &ONNX_API; }
