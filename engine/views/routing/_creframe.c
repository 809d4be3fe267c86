/*
 * The router's per-record loops in C: the same work as ``_records`` and the body of
 * ``encode_routed`` in reframe.py, which stay as the reference and the fallback when this
 * module was not built.  Both directions only move bytes: a record's body (key and value
 * with their lengths) and its header bytes are copied, never decoded; only the deltas and
 * the length prefix are computed.
 *
 * Bytes are untrusted: every read is bounded by the record's declared end, and anything
 * malformed raises the exception that the Python ``bad(index, reason)`` callable returns
 * (an InvalidBatchError), never reads past the buffer.
 */
#include "_native.h"
#include <string.h>

static int
zigzag_size(int64_t value)
{
    uint64_t z = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    int size = 1;
    while (z >= 0x80) {
        z >>= 7;
        size++;
    }
    return size;
}

static unsigned char *
write_zigzag(unsigned char *out, int64_t value)
{
    uint64_t z = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (z >= 0x80) {
        *out++ = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    *out++ = (unsigned char)z;
    return out;
}

static void
raise_bad(PyObject *bad, Py_ssize_t index, const char *reason)
{
    PyObject *exc = PyObject_CallFunction(bad, "ns", index, reason);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

#define FIELD(bytes_max, target, what)                                              \
    do {                                                                            \
        int rc_ = moldau_zigzag(d, end, &pos, (bytes_max), (bytes_max) == 5 ? 32 : 64, \
                                &(target));                                         \
        if (rc_ != ZIGZAG_OK) {                                                     \
            raise_bad(bad, index, rc_ == ZIGZAG_TRUNCATED ? "truncated"             \
                                  : what " varint is too long or too big");         \
            goto fail;                                                              \
        }                                                                           \
    } while (0)

PyDoc_STRVAR(records_doc,
"records(data, base_offset, base_timestamp, last_offset_delta, append_time, record_count,\n"
"        record_type, headers, bad, no_headers) -> list\n\n"
"The records of an uncompressed records section as ``record_type`` tuples (offset,\n"
"timestamp, key, headers, body, header_bytes). ``headers(data, pos, end, index)`` decodes\n"
"non-empty headers; ``bad(index, reason)`` makes the exception for malformed bytes.");

static PyObject *
records(PyObject *module, PyObject *args)
{
    Py_buffer view;
    long long base_offset, base_ts, last_delta;
    PyObject *data, *append_time_obj, *record_type, *headers_fn, *bad, *no_headers;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "OLLLOnOOOO", &data, &base_offset, &base_ts, &last_delta,
                          &append_time_obj, &count, &record_type, &headers_fn, &bad,
                          &no_headers)) {
        return NULL;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *out = NULL, *empty = NULL;
    int have_append_time = append_time_obj != Py_None;
    long long append_time = 0;
    if (have_append_time) {
        append_time = PyLong_AsLongLong(append_time_obj);
        if (append_time == -1 && PyErr_Occurred()) {
            goto fail;
        }
    }
    if (!PyType_Check(record_type) ||
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass");
        goto fail;
    }
    if (count < 0) {
        raise_bad(bad, 0, "negative record count");
        goto fail;
    }
    const unsigned char *d = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len, pos = 0, end = size, index = 0;
    /* a record takes at least 6 bytes: never trust the count for the allocation */
    out = PyList_New(0);
    empty = PyTuple_New(0);
    if (out == NULL || empty == NULL) {
        goto fail;
    }
    PyTypeObject *type = (PyTypeObject *)record_type;
    for (index = 0; index < count; index++) {
        int64_t length, ts_delta, delta, klen, vlen;
        end = size;
        FIELD(5, length, "length");
        if (length < 6 || length > size - pos) {
            PyObject *reason = PyUnicode_FromFormat("length %lld does not fit",
                                                    (long long)length);
            if (reason != NULL) {
                raise_bad(bad, index, PyUnicode_AsUTF8(reason));
                Py_DECREF(reason);
            }
            goto fail;
        }
        end = pos + (Py_ssize_t)length;
        pos += 1; /* attributes */
        FIELD(10, ts_delta, "timestampDelta");
        FIELD(5, delta, "offsetDelta");
        Py_ssize_t start = pos;
        PyObject *key;
        if (pos < end && d[pos] == 1) {
            key = Py_NewRef(Py_None);
            pos += 1;
        }
        else {
            FIELD(5, klen, "key length");
            if (klen < 0 || klen > end - pos) {
                raise_bad(bad, index, "key length is invalid");
                goto fail;
            }
            key = PyBytes_FromStringAndSize((const char *)d + pos, (Py_ssize_t)klen);
            if (key == NULL) {
                goto fail;
            }
            pos += (Py_ssize_t)klen;
        }
        int rc = moldau_zigzag(d, end, &pos, 5, 32, &vlen);
        if (rc != ZIGZAG_OK || vlen < -1 || vlen > end - pos) {
            Py_DECREF(key);
            raise_bad(bad, index, rc == ZIGZAG_TRUNCATED ? "truncated" : "value length is invalid");
            goto fail;
        }
        if (vlen > 0) {
            pos += (Py_ssize_t)vlen;
        }
        PyObject *body = PyBytes_FromStringAndSize((const char *)d + start, pos - start);
        PyObject *headers, *header_bytes;
        if (body == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        if (pos + 1 == end && d[pos] == 0) {
            headers = Py_NewRef(empty);
            header_bytes = Py_NewRef(no_headers);
        }
        else if (pos >= end) {
            Py_DECREF(key);
            Py_DECREF(body);
            raise_bad(bad, index, "truncated");
            goto fail;
        }
        else {
            headers = PyObject_CallFunction(headers_fn, "Onnn", data, pos, end, index);
            header_bytes = headers == NULL ? NULL
                : PyBytes_FromStringAndSize((const char *)d + pos, end - pos);
            if (header_bytes == NULL) {
                Py_DECREF(key);
                Py_DECREF(body);
                Py_XDECREF(headers);
                goto fail;
            }
        }
        if (delta < 0 || delta > last_delta) {
            Py_DECREF(key);
            Py_DECREF(body);
            Py_DECREF(headers);
            Py_DECREF(header_bytes);
            raise_bad(bad, index, "offsetDelta is outside the batch");
            goto fail;
        }
        PyObject *offset = moldau_exact_sum(base_offset, delta);
        PyObject *timestamp = have_append_time ? PyLong_FromLongLong(append_time)
                                               : moldau_exact_sum(base_ts, ts_delta);
        PyObject *record = type->tp_alloc(type, 6);
        if (offset == NULL || timestamp == NULL || record == NULL) {
            Py_XDECREF(offset);
            Py_XDECREF(timestamp);
            Py_XDECREF(record);
            Py_DECREF(key);
            Py_DECREF(body);
            Py_DECREF(headers);
            Py_DECREF(header_bytes);
            goto fail;
        }
        PyTuple_SET_ITEM(record, 0, offset);
        PyTuple_SET_ITEM(record, 1, timestamp);
        PyTuple_SET_ITEM(record, 2, key);
        PyTuple_SET_ITEM(record, 3, headers);
        PyTuple_SET_ITEM(record, 4, body);
        PyTuple_SET_ITEM(record, 5, header_bytes);
        int appended = PyList_Append(out, record);
        Py_DECREF(record);
        if (appended < 0) {
            goto fail;
        }
        pos = end;
    }
    if (pos != size) {
        PyObject *reason = PyUnicode_FromFormat("%zd bytes follow the last record", size - pos);
        if (reason != NULL) {
            raise_bad(bad, index, PyUnicode_AsUTF8(reason));
            Py_DECREF(reason);
        }
        goto fail;
    }
    Py_DECREF(empty);
    PyBuffer_Release(&view);
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(empty);
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(encode_doc,
"encode(records) -> (records_section, max_timestamp)\n\n"
"The records section of a batch holding ``records`` (RoutedRecord tuples) at offset deltas\n"
"0..n-1 with the first record's timestamp as the base: length, attributes 0, the deltas,\n"
"then the body and header bytes as they were.");

static PyObject *
encode(PyObject *module, PyObject *seq)
{
    PyObject *fast = PySequence_Fast(seq, "records must be a sequence");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    if (n == 0) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "a batch needs at least one record");
        return NULL;
    }
    int64_t base_ts = 0, max_ts = 0;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = items[i];
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != 6 ||
            !PyBytes_Check(PyTuple_GET_ITEM(record, 4)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(record, 5))) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "records must be RoutedRecord tuples");
            return NULL;
        }
        long long ts = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 1));
        if (ts == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
        if (i == 0) {
            base_ts = max_ts = ts;
        }
        else if (ts > max_ts) {
            max_ts = ts;
        }
        int64_t length = 1 + zigzag_size((int64_t)ts - base_ts) + zigzag_size((int64_t)i)
            + PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 4))
            + PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 5));
        total += zigzag_size(length) + length;
    }
    PyObject *blob = PyBytes_FromStringAndSize(NULL, total);
    if (blob == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(blob);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = items[i];
        int64_t ts_delta = (int64_t)PyLong_AsLongLong(PyTuple_GET_ITEM(record, 1)) - base_ts;
        PyObject *body = PyTuple_GET_ITEM(record, 4);
        PyObject *header_bytes = PyTuple_GET_ITEM(record, 5);
        Py_ssize_t body_size = PyBytes_GET_SIZE(body);
        Py_ssize_t header_size = PyBytes_GET_SIZE(header_bytes);
        int64_t length = 1 + zigzag_size(ts_delta) + zigzag_size((int64_t)i) + body_size
            + header_size;
        out = write_zigzag(out, length);
        *out++ = 0;
        out = write_zigzag(out, ts_delta);
        out = write_zigzag(out, (int64_t)i);
        memcpy(out, PyBytes_AS_STRING(body), (size_t)body_size);
        out += body_size;
        memcpy(out, PyBytes_AS_STRING(header_bytes), (size_t)header_size);
        out += header_size;
    }
    Py_DECREF(fast);
    PyObject *result = Py_BuildValue("(NL)", blob, (long long)max_ts);
    return result;
}

static PyMethodDef methods[] = {
    {"records", records, METH_VARARGS, records_doc},
    {"encode", encode, METH_O, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_creframe",
    "The router's per-record loops in C (see reframe.py for the reference).", -1, methods,
};

PyMODINIT_FUNC
PyInit__creframe(void)
{
    return PyModule_Create(&module);
}
