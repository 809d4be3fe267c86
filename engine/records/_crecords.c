/*
 * The record loops in C.  ``decode(...)`` returns what ``record.decode_records`` returns, or
 * None where it would raise (the caller then runs it for the precise error); readers of the
 * log (queue scans and loads, routing, fetch-side decoding) use it.
 *
 * The produce path's record check: ``check(data, count, last_delta)`` is True exactly
 * when ``record.decode_record_values`` would decode ``data`` (an uncompressed records
 * section), without building anything.  The Python loop stays the reference: on False the
 * caller runs it, so the error a client sees is the Python one, with its precise message.
 *
 * Every check of the Python loop is repeated here in the same order, with the same limits:
 * varints of at most 5 bytes whose value fits 32 bits (varlongs: 10 bytes, 64 bits), a key
 * length of -1 only as the single byte 0x01, header keys that are strict UTF-8, header
 * counts and lengths bounded by the record's end, offset deltas in 0..last_delta, and each
 * record ending exactly where its length says.  A read past the buffer is a rejection (the
 * Python loop's IndexError).
 */
#include "_native.h"

#define MIN_RECORD_BODY 6

#define VARINT(target)                                              \
    if (moldau_zigzag(d, size, &pos, 5, 32, &(target)) != ZIGZAG_OK) {              \
        return 0;                                                   \
    }

static int
headers_ok(const unsigned char *d, Py_ssize_t size, Py_ssize_t *at, Py_ssize_t end)
{
    Py_ssize_t pos = *at;
    int64_t count;
    VARINT(count);
    if (end - pos < 0 || count < 0 || count > (end - pos) / 2) {
        return 0;
    }
    for (int64_t n = 0; n < count; n++) {
        int64_t klen, vlen;
        VARINT(klen);
        if (klen < 0 || klen > end - pos) {
            return 0;
        }
        PyObject *key = PyUnicode_DecodeUTF8((const char *)d + pos, (Py_ssize_t)klen,
                                             "strict");
        if (key == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(key);
        pos += (Py_ssize_t)klen;
        VARINT(vlen);
        if (vlen == -1) {
            continue;
        }
        if (vlen < 0 || vlen > end - pos) {
            return 0;
        }
        pos += (Py_ssize_t)vlen;
    }
    *at = pos;
    return 1;
}

/* ------------------------------------------------------------------ decoding */

#define DVARINT(target)                                             \
    if (moldau_zigzag(d, size, &pos, 5, 32, &(target)) != ZIGZAG_OK) { \
        goto refuse;                                                \
    }

static PyObject *s_key, *s_value; /* "key", "value": Header's slots */

/* A Header(key, value) without running the frozen dataclass's __init__ (which goes
 * through object.__setattr__ per field anyway): allocate, then set the two slots. */
static PyObject *
new_header(PyTypeObject *header_type, PyObject *key, PyObject *value)
{
    PyObject *header = header_type->tp_alloc(header_type, 0);
    if (header == NULL) {
        return NULL;
    }
    if (PyObject_GenericSetAttr(header, s_key, key) < 0
        || PyObject_GenericSetAttr(header, s_value, value) < 0) {
        Py_DECREF(header);
        return NULL;
    }
    return header;
}

/* The headers of one record as a tuple (*out), or 0 to refuse (no exception set) or -1 on an
 * error (exception set).  The same checks as record._decode_headers. */
static int
decode_headers(const unsigned char *d, Py_ssize_t size, Py_ssize_t *at, Py_ssize_t end,
               PyTypeObject *header_type, PyObject **out)
{
    Py_ssize_t pos = *at;
    int64_t count;
    PyObject *headers = NULL;
    DVARINT(count);
    if (end - pos < 0 || count < 0 || count > (end - pos) / 2) {
        goto refuse;
    }
    headers = PyTuple_New((Py_ssize_t)count);
    if (headers == NULL) {
        return -1;
    }
    for (int64_t n = 0; n < count; n++) {
        int64_t klen, vlen;
        DVARINT(klen);
        if (klen < 0 || klen > end - pos) {
            goto refuse;
        }
        PyObject *key = PyUnicode_DecodeUTF8((const char *)d + pos, (Py_ssize_t)klen,
                                             "strict");
        if (key == NULL) {
            PyErr_Clear();
            goto refuse;
        }
        pos += (Py_ssize_t)klen;
        PyObject *value;
        if (moldau_zigzag(d, size, &pos, 5, 32, &vlen) != ZIGZAG_OK
            || (vlen != -1 && (vlen < 0 || vlen > end - pos))) {
            Py_DECREF(key);
            goto refuse;
        }
        if (vlen == -1) {
            value = Py_NewRef(Py_None);
        }
        else {
            value = PyBytes_FromStringAndSize((const char *)d + pos, (Py_ssize_t)vlen);
            pos += (Py_ssize_t)vlen;
        }
        PyObject *header = value ? new_header(header_type, key, value) : NULL;
        Py_DECREF(key);
        Py_XDECREF(value);
        if (header == NULL) {
            Py_DECREF(headers);
            return -1;
        }
        PyTuple_SET_ITEM(headers, (Py_ssize_t)n, header);
    }
    *at = pos;
    *out = headers;
    return 1;
refuse:
    Py_XDECREF(headers);
    return 0;
}

/* key or value: bytes, or None for length -1 */
static PyObject *
field(const unsigned char *d, Py_ssize_t pos, int64_t length)
{
    if (length < 0) {
        return Py_NewRef(Py_None);
    }
    return PyBytes_FromStringAndSize((const char *)d + pos, (Py_ssize_t)length);
}

/* One pass over the records section with every check of the Python loop, in its order.
 *
 * build: the records as a list of record_type tuples (only those at offsets in `wanted`
 * unless it is Py_None; the others are checked, not built), Py_None to refuse (the Python
 * loop then raises its precise error), or NULL on an error.  Not build (the produce check):
 * Py_True or Py_False, building nothing. */
static inline __attribute__((always_inline)) PyObject * /* specialised per `build` */
walk(const unsigned char *d, Py_ssize_t size, Py_ssize_t count, long long base_offset,
     long long base_ts, long long last_delta, PyObject *append_time,
     PyTypeObject *record_type, PyTypeObject *header_type, PyObject *wanted, int build)
{
    Py_ssize_t kept = 0;
    PyObject *refused = build ? Py_None : Py_False;
    if (count < 0) {
        count = 0; /* the Python loops run no iteration: only an empty section passes */
    }
    if (count > size) { /* a record takes at least one byte */
        return Py_NewRef(refused);
    }
    PyObject *records = build ? PyList_New(count) : NULL;
    PyObject *empty = PyTuple_New(0);
    if ((build && records == NULL) || empty == NULL) {
        Py_XDECREF(records);
        Py_XDECREF(empty);
        return NULL;
    }
    Py_ssize_t pos = 0;
    for (Py_ssize_t index = 0; index < count; index++) {
        int64_t length, ts_delta, delta, klen = -1, vlen;
        Py_ssize_t key_at, value_at;
        PyObject *headers;
        DVARINT(length);
        if (length < MIN_RECORD_BODY || length > size - pos) {
            goto refuse;
        }
        Py_ssize_t end = pos + (Py_ssize_t)length;
        pos += 1; /* attributes */
        if (moldau_zigzag(d, size, &pos, 10, 64, &ts_delta) != ZIGZAG_OK) {
            goto refuse;
        }
        DVARINT(delta);
        if (pos >= size) {
            goto refuse;
        }
        if (d[pos] == 1) {
            pos += 1;
        }
        else {
            DVARINT(klen);
            if (klen < 0 || klen > size - pos) {
                goto refuse;
            }
        }
        key_at = pos;
        pos += klen > 0 ? (Py_ssize_t)klen : 0;
        DVARINT(vlen);
        if (vlen < -1 || (vlen >= 0 && vlen > size - pos)) {
            goto refuse;
        }
        value_at = pos;
        pos += vlen > 0 ? (Py_ssize_t)vlen : 0;
        if (pos >= size) {
            goto refuse;
        }
        int skip = !build;
        if (build && wanted != Py_None) {
            PyObject *offset = moldau_exact_sum(base_offset, delta);
            int member = offset ? PySequence_Contains(wanted, offset) : -1;
            Py_XDECREF(offset);
            if (member < 0) {
                goto error;
            }
            skip = !member;
        }
        if (d[pos] == 0) {
            pos += 1;
            headers = Py_NewRef(empty);
        }
        else if (skip) {
            if (!headers_ok(d, size, &pos, end)) {
                goto refuse;
            }
            headers = Py_NewRef(empty);
        }
        else {
            int got = decode_headers(d, size, &pos, end, header_type, &headers);
            if (got < 0) {
                goto error;
            }
            if (got == 0) {
                goto refuse;
            }
        }
        if (pos != end || delta < 0 || delta > last_delta) {
            Py_DECREF(headers);
            goto refuse;
        }
        if (skip) {
            Py_DECREF(headers);
            continue;
        }
        PyObject *record = record_type->tp_alloc(record_type, 5);
        PyObject *offset = moldau_exact_sum(base_offset, delta);
        PyObject *timestamp = append_time != Py_None ? Py_NewRef(append_time)
                                                      : moldau_exact_sum(base_ts, ts_delta);
        PyObject *key = field(d, key_at, klen);
        PyObject *value = field(d, value_at, vlen);
        if (record == NULL || offset == NULL || timestamp == NULL || key == NULL
            || value == NULL) {
            Py_XDECREF(record);
            Py_XDECREF(offset);
            Py_XDECREF(timestamp);
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(headers);
            goto error;
        }
        PyTuple_SET_ITEM(record, 0, offset);
        PyTuple_SET_ITEM(record, 1, timestamp);
        PyTuple_SET_ITEM(record, 2, key);
        PyTuple_SET_ITEM(record, 3, value);
        PyTuple_SET_ITEM(record, 4, headers);
        PyList_SET_ITEM(records, kept++, record);
    }
    Py_DECREF(empty);
    if (pos != size) {
        Py_XDECREF(records);
        return Py_NewRef(refused);
    }
    if (!build) {
        Py_RETURN_TRUE;
    }
    if (kept < count && PyList_SetSlice(records, kept, count, NULL) < 0) {
        Py_DECREF(records);
        return NULL;
    }
    return records;
refuse:
    Py_XDECREF(records);
    Py_DECREF(empty);
    return Py_NewRef(refused);
error:
    Py_XDECREF(records);
    Py_DECREF(empty);
    return NULL;
}

PyDoc_STRVAR(decode_doc,
"decode(data, count, base_offset, base_ts, last_delta, append_time, record_type,\n"
"       header_type, wanted=None) -> list | None\n\n"
"The records record.decode_records would return, or None where it would raise (it is then\n"
"run to raise its precise error). append_time None: each record's own timestamp. wanted:\n"
"a container of offsets; only those records are built (all are still checked).");

static PyObject *
decode(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t count;
    long long base_offset, base_ts, last_delta;
    PyObject *append_time, *record_type, *header_type, *wanted = Py_None;
    if (!PyArg_ParseTuple(args, "y*nLLLOO!O!|O", &view, &count, &base_offset, &base_ts,
                          &last_delta, &append_time, &PyType_Type, &record_type,
                          &PyType_Type, &header_type, &wanted)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass");
        return NULL;
    }
    PyObject *result = walk((const unsigned char *)view.buf, view.len, count, base_offset,
                            base_ts, last_delta, append_time, (PyTypeObject *)record_type,
                            (PyTypeObject *)header_type, wanted, 1);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(check_doc,
"check(data, count, last_delta) -> bool\n\n"
"True when decode_record_values would decode ``data`` (count records, offset deltas in\n"
"0..last_delta); False when it would raise.");

static PyObject *
check(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t count;
    long long last_delta;
    if (!PyArg_ParseTuple(args, "y*nL", &view, &count, &last_delta)) {
        return NULL;
    }
    PyObject *result = walk((const unsigned char *)view.buf, view.len, count, 0, 0,
                            last_delta, Py_None, NULL, NULL, Py_None, 0);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(murmur2_doc,
"murmur2(key) -> int\n\n"
"Kafka's Utils.murmur2 of ``key``: a signed 32-bit int (see engine.partitioner.murmur2).");

static PyObject *
murmur2(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t length = view.len;
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t words = length / 4;
    for (Py_ssize_t i = 0; i < words; i++) {
        const unsigned char *p = data + 4 * i;
        uint32_t k = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
                     | ((uint32_t)p[3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + 4 * words;
    switch (length & 3) {  /* falls through from the top byte, as Java's switch does */
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    PyBuffer_Release(&view);
    return PyLong_FromLong((long)(int32_t)h);
}

static PyMethodDef methods[] = {
    {"murmur2", murmur2, METH_O, murmur2_doc},
    {"check", check, METH_VARARGS, check_doc},
    {"decode", decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_crecords",
    "The produce path's record check in C (see record.check_records).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__crecords(void)
{
    s_key = PyUnicode_InternFromString("key");
    s_value = PyUnicode_InternFromString("value");
    if (s_key == NULL || s_value == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
