/*
 * The records of a PackedEvents append, written in C (see engine.views.eventstore.packed).
 *
 * ``encode(raw, spans, ids, key_part, first_version, delta)`` returns exactly the bytes that
 * ``codec.encode_event_group``'s Python loop writes for the same events: per event a record
 * (length, attributes 0, timestampDelta 0, offsetDelta, key, value, headers es.version,
 * es.id, es.type, es.type_version and es.metadata when it is not empty), offset deltas
 * counting from ``delta``, versions from ``first_version``.  The Python loop stays the
 * reference (a property test compares them).
 */
#include "_native.h"
#include <string.h>

#define SPAN_FIELDS 7

static const char H_VERSION[] = "es.version";
static const char H_EVENT_ID[] = "es.id";
static const char H_TYPE[] = "es.type";
static const char H_TYPE_VERSION[] = "es.type_version";
static const char H_METADATA[] = "es.metadata";

/* Kafka's zig-zag varint of a non-negative value: the unsigned varint of value << 1 */
static inline Py_ssize_t
varint_size(uint64_t value)
{
    return moldau_uvarint_size(value << 1);
}

static inline unsigned char *
put_varint(unsigned char *out, uint64_t value)
{
    return moldau_put_uvarint(out, value << 1);
}

static inline unsigned char *
put_field(unsigned char *out, const void *data, Py_ssize_t length)
{
    out = put_varint(out, (uint64_t)length);
    memcpy(out, data, (size_t)length);
    return out + length;
}

/* ``b"%d" % value`` of a non-negative value into buffer (24 bytes); its length */
static inline int
decimal(char *buffer, long long value)
{
    char reversed[24];
    int length = 0;
    unsigned long long rest = (unsigned long long)value;
    do {
        reversed[length++] = (char)('0' + rest % 10);
        rest /= 10;
    } while (rest);
    for (int i = 0; i < length; i++) {
        buffer[i] = reversed[length - 1 - i];
    }
    return length;
}

#define HEADER_KEY_SIZE(name) (varint_size(sizeof(name) - 1) + (Py_ssize_t)sizeof(name) - 1)

/* the record's length field: everything after it */
static Py_ssize_t
body_size(const int64_t *s, Py_ssize_t id_len, Py_ssize_t key_len, long long version,
          long long offset_delta)
{
    char number[24];
    int version_len = decimal(number, version);
    int type_version_len = decimal(number, s[6]);
    Py_ssize_t size = 2 + varint_size((uint64_t)offset_delta) + key_len
                      + varint_size((uint64_t)s[3]) + s[3] + 1
                      + HEADER_KEY_SIZE(H_VERSION) + varint_size((uint64_t)version_len)
                      + version_len
                      + HEADER_KEY_SIZE(H_EVENT_ID) + varint_size((uint64_t)id_len) + id_len
                      + HEADER_KEY_SIZE(H_TYPE) + varint_size((uint64_t)s[1]) + s[1]
                      + HEADER_KEY_SIZE(H_TYPE_VERSION) + varint_size((uint64_t)type_version_len)
                      + type_version_len;
    if (s[5] > 0) {
        size += HEADER_KEY_SIZE(H_METADATA) + varint_size((uint64_t)s[5]) + s[5];
    }
    return size;
}

PyDoc_STRVAR(encode_doc,
"encode(raw, spans, ids, key_part, first_version, delta) -> bytes\n\n"
"The records of one PackedEvents append (see the module comment).");

static PyObject *
encode(PyObject *module, PyObject *args)
{
    Py_buffer raw, spans, key;
    PyObject *ids;
    long long first_version, delta;
    if (!PyArg_ParseTuple(args, "y*y*O!y*LL", &raw, &spans, &PyList_Type, &ids, &key,
                          &first_version, &delta)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(ids);
    const int64_t *span = (const int64_t *)spans.buf;
    if (spans.len != count * SPAN_FIELDS * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "spans do not match the ids");
        goto done;
    }
    if (first_version < 0 || delta < 0 || first_version > INT64_MAX / 2 - count
        || delta > INT32_MAX - count) {
        PyErr_SetString(PyExc_ValueError, "first_version or delta out of range");
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t n = 0; n < count; n++) {
        const int64_t *s = span + n * SPAN_FIELDS;
        for (int f = 0; f < 6; f += 2) {
            if (s[f] < 0 || s[f + 1] < 0 || s[f] > raw.len || s[f + 1] > raw.len - s[f]) {
                PyErr_SetString(PyExc_ValueError, "a span lies outside raw");
                goto done;
            }
        }
        PyObject *id = PyList_GET_ITEM(ids, n);
        if (!PyBytes_Check(id)) {
            PyErr_SetString(PyExc_TypeError, "event ids are bytes");
            goto done;
        }
        if (s[6] < 0 || s[6] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a type version out of range");
            goto done;
        }
        Py_ssize_t body = body_size(s, PyBytes_GET_SIZE(id), key.len, first_version + n,
                                    delta + n);
        total += varint_size((uint64_t)body) + body;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    const unsigned char *d = (const unsigned char *)raw.buf;
    for (Py_ssize_t n = 0; n < count; n++) {
        const int64_t *s = span + n * SPAN_FIELDS;
        PyObject *id = PyList_GET_ITEM(ids, n);
        char version[24], type_version[24];
        int version_len = decimal(version, first_version + n);
        int type_version_len = decimal(type_version, s[6]);
        Py_ssize_t body = body_size(s, PyBytes_GET_SIZE(id), key.len, first_version + n,
                                    delta + n);
        out = put_varint(out, (uint64_t)body);
        *out++ = 0; /* attributes */
        *out++ = 0; /* timestampDelta */
        out = put_varint(out, (uint64_t)(delta + n));
        memcpy(out, key.buf, (size_t)key.len);
        out += key.len;
        out = put_field(out, d + s[2], s[3]);
        *out++ = s[5] > 0 ? 0x0a : 0x08; /* 5 or 4 headers */
        out = put_field(out, H_VERSION, sizeof(H_VERSION) - 1);
        out = put_field(out, version, version_len);
        out = put_field(out, H_EVENT_ID, sizeof(H_EVENT_ID) - 1);
        out = put_field(out, PyBytes_AS_STRING(id), PyBytes_GET_SIZE(id));
        out = put_field(out, H_TYPE, sizeof(H_TYPE) - 1);
        out = put_field(out, d + s[0], s[1]);
        out = put_field(out, H_TYPE_VERSION, sizeof(H_TYPE_VERSION) - 1);
        out = put_field(out, type_version, type_version_len);
        if (s[5] > 0) {
            out = put_field(out, H_METADATA, sizeof(H_METADATA) - 1);
            out = put_field(out, d + s[4], s[5]);
        }
    }
    if (out != (unsigned char *)PyBytes_AS_STRING(result) + total) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_SystemError, "record sizes disagree");
    }
done:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&spans);
    PyBuffer_Release(&key);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cevents",
    "The records of PackedEvents appends in C (see engine.views.eventstore.packed).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cevents(void)
{
    return PyModule_Create(&module);
}
