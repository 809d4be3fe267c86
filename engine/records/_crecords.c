/*
 * The produce path's record check in C: ``check(data, count, last_delta)`` is True exactly
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

static int
records_ok(const unsigned char *d, Py_ssize_t size, Py_ssize_t count, long long last_delta)
{
    Py_ssize_t pos = 0;
    for (Py_ssize_t index = 0; index < count; index++) {
        int64_t length, ts_delta, delta, klen, vlen;
        VARINT(length);
        if (length < MIN_RECORD_BODY || length > size - pos) {
            return 0;
        }
        Py_ssize_t end = pos + (Py_ssize_t)length;
        pos += 1; /* attributes: not checked, as in the Python loop */
        if (moldau_zigzag(d, size, &pos, 10, 64, &ts_delta) != ZIGZAG_OK) {
            return 0;
        }
        VARINT(delta);
        if (pos >= size) {
            return 0;
        }
        if (d[pos] == 1) {
            pos += 1;
        }
        else {
            VARINT(klen);
            if (klen < 0 || klen > size - pos) {
                return 0;
            }
            pos += (Py_ssize_t)klen;
        }
        VARINT(vlen);
        if (vlen >= 0) {
            if (vlen > size - pos) {
                return 0;
            }
            pos += (Py_ssize_t)vlen;
        }
        else if (vlen != -1) {
            return 0;
        }
        if (pos >= size) {
            return 0;
        }
        if (d[pos] == 0) {
            pos += 1;
        }
        else if (!headers_ok(d, size, &pos, end)) {
            return 0;
        }
        if (pos != end || delta < 0 || delta > last_delta) {
            return 0;
        }
    }
    return pos == size;
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
    int ok = records_ok((const unsigned char *)view.buf, view.len, count, last_delta);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"check", check, METH_VARARGS, check_doc},
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
    return PyModule_Create(&module);
}
