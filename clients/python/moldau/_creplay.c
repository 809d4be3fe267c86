/*
 * The replay decoder's record loop in C: ``_decode`` of _replay_codec.py, which stays the
 * reference (a differential property test holds the two together) and the fallback when this
 * module was not built.  It reads event-store records straight from fetched batch bytes into
 * StoredEvent tuples.
 *
 * Exactness over elegance: every read is bounded by the whole buffer, as the Python loop's
 * indexing is (a record's fields may run past its end and fail later, exactly where the
 * Python loop fails), one- and two-byte lengths are read the way the Python loop reads them,
 * and the headers take the Python slow path's semantics (the regular-expression fast path is
 * only a shortcut to the same result).  Any malformed input raises ValueError; the caller
 * turns it into CorruptRecordError.
 */
#include "_native.h"
#include <string.h>

typedef struct {
    const unsigned char *d;
    Py_ssize_t n;
} Buf;

static int
fail(const char *what)
{
    PyErr_SetString(PyExc_ValueError, what);
    return -1;
}

/* engine.records.decode_varint / decode_varlong, raising ValueError as they raise */
static int
varint(const Buf *b, Py_ssize_t pos, int max_bytes, int bits, int64_t *value, Py_ssize_t *next)
{
    Py_ssize_t at = pos;
    switch (moldau_zigzag(b->d, b->n, &at, max_bytes, bits, value)) {
    case ZIGZAG_OK:
        *next = at;
        return 0;
    case ZIGZAG_TRUNCATED:
        return fail(pos < 0 ? "varint position is negative" : "varint is truncated");
    case ZIGZAG_TOO_BIG:
        return fail("varint does not fit");
    default:
        return fail("varint is too long");
    }
}

static int
byte_at(const Buf *b, Py_ssize_t pos, unsigned int *out)
{
    if (pos < 0 || pos >= b->n) {
        return fail("index out of range");
    }
    *out = b->d[pos];
    return 0;
}

/* A length as the Python loop reads it: one byte and two bytes without the sign (z >> 1),
 * longer ones signed through decode_varint. */
static int
loose_length(const Buf *b, Py_ssize_t *pos, int64_t *out)
{
    unsigned int byte, second;
    if (byte_at(b, *pos, &byte) < 0) {
        return -1;
    }
    if (byte < 0x80) {
        *out = byte >> 1;
        *pos += 1;
        return 0;
    }
    if (byte_at(b, *pos + 1, &second) < 0) {
        return -1;
    }
    if (second < 0x80) {
        *out = ((byte & 0x7F) | (second << 7)) >> 1;
        *pos += 2;
        return 0;
    }
    return varint(b, *pos, 5, 32, out, pos);
}

/* A Python slice b[start:stop] for 0 <= start (stop may pass the end: it is clamped). */
static PyObject *
slice(const Buf *b, Py_ssize_t start, Py_ssize_t stop)
{
    if (start > b->n) {
        start = b->n;
    }
    if (stop > b->n) {
        stop = b->n;
    }
    if (stop < start) {
        stop = start;
    }
    return PyBytes_FromStringAndSize((const char *)b->d + start, stop - start);
}

enum { VERSION, ID, TYPE, TYPE_VERSION, METADATA, SLOTS };

static const struct {
    const char *name;
    Py_ssize_t size;
} KEYS[SLOTS] = {
    {"es.version", 10}, {"es.id", 5}, {"es.type", 7}, {"es.type_version", 15},
    {"es.metadata", 11},
};

/* _headers: the event headers in any order; *found = 0 when it is not an event. Slots hold
 * (start, stop) of each value, or start -1 when absent; a null value is empty. */
static int
headers(const Buf *b, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t spans[SLOTS][2], int *found)
{
    int64_t count;
    for (int i = 0; i < SLOTS; i++) {
        spans[i][0] = -1;
        spans[i][1] = -1;
    }
    if (varint(b, pos, 5, 32, &count, &pos) < 0) {
        return -1;
    }
    for (int64_t n = 0; n < count; n++) {
        int64_t klen, hlen;
        Py_ssize_t key_start = pos;
        if (varint(b, pos, 5, 32, &klen, &key_start) < 0) {
            return -1;
        }
        int slot = -1;
        /* the Python slice b[pos:pos+klen]: only a non-negative, in-buffer key can match */
        if (klen >= 0 && key_start + klen <= b->n) {
            for (int i = 0; i < SLOTS; i++) {
                if (KEYS[i].size == klen &&
                    memcmp(b->d + key_start, KEYS[i].name, (size_t)klen) == 0) {
                    slot = i;
                    break;
                }
            }
        }
        if (varint(b, key_start + klen, 5, 32, &hlen, &pos) < 0) {
            return -1;
        }
        if (slot >= 0) {
            spans[slot][0] = pos;
            spans[slot][1] = hlen >= 0 ? pos + hlen : pos;
        }
        if (hlen > 0) {
            pos += hlen;
        }
    }
    if (pos != end) {
        return fail("a record's headers do not end where its length says");
    }
    for (int i = 0; i < SLOTS; i++) { /* clamp value spans as the Python slices are */
        if (spans[i][0] >= 0 && spans[i][1] > b->n) {
            spans[i][1] = b->n;
        }
    }
    *found = !(spans[VERSION][0] < 0 || spans[ID][0] < 0 || spans[TYPE][0] < 0 ||
               (spans[TYPE][1] > spans[TYPE][0] && b->d[spans[TYPE][0]] == '$'));
    return 0;
}

/* int(b[start:stop]) exactly as Python computes it (digits fast, anything else via int()) */
static PyObject *
decimal(const Buf *b, Py_ssize_t start, Py_ssize_t stop)
{
    Py_ssize_t size = stop - start;
    if (size > 0 && size <= 18) {
        int64_t value = 0;
        Py_ssize_t i = start;
        for (; i < stop && b->d[i] >= '0' && b->d[i] <= '9'; i++) {
            value = value * 10 + (b->d[i] - '0');
        }
        if (i == stop) {
            return PyLong_FromLongLong(value);
        }
    }
    PyObject *raw = slice(b, start, stop);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *value = PyNumber_Long(raw);
    Py_DECREF(raw);
    return value;
}

typedef struct {
    PyObject *topic, *partition, *out, *matcher, *event_type, *append_time, *names;
    long long base_offset, base_ts, first_offset;
    PyObject *last_key, *last_stream;
    int last_match;
} Context;

/* One event record that passed the key, value and header checks: append its StoredEvent. */
static int
emit(Context *c, const Buf *b, Py_ssize_t key_start, Py_ssize_t klen, int64_t delta,
     int64_t ts_delta, Py_ssize_t value_start, Py_ssize_t value_stop,
     Py_ssize_t spans[SLOTS][2], int *skipped)
{
    PyObject *key = slice(b, key_start, key_start + klen);
    if (key == NULL) {
        return -1;
    }
    int same = c->last_key != NULL && PyBytes_GET_SIZE(key) == PyBytes_GET_SIZE(c->last_key) &&
               memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(c->last_key),
                      (size_t)PyBytes_GET_SIZE(key)) == 0;
    if (!same) {
        PyObject *stream = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                                "strict");
        if (stream == NULL) {
            Py_DECREF(key);
            return -1;
        }
        int match = 1;
        if (c->matcher != Py_None) {
            PyObject *verdict = PyObject_CallOneArg(c->matcher, stream);
            match = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
            Py_XDECREF(verdict);
            if (match < 0) {
                Py_DECREF(key);
                Py_DECREF(stream);
                return -1;
            }
        }
        Py_XSETREF(c->last_key, key);
        Py_XSETREF(c->last_stream, stream);
        c->last_match = match;
    }
    else {
        Py_DECREF(key);
    }
    if (!c->last_match) {
        *skipped += 1;
        return 0;
    }
    PyObject *type_raw = slice(b, spans[TYPE][0], spans[TYPE][1]);
    if (type_raw == NULL) {
        return -1;
    }
    PyObject *name = PyDict_GetItemWithError(c->names, type_raw); /* borrowed */
    if (name == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(type_raw);
            return -1;
        }
        name = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(type_raw), PyBytes_GET_SIZE(type_raw),
                                    "strict");
        if (name == NULL || PyDict_SetItem(c->names, type_raw, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(type_raw);
            return -1;
        }
        Py_DECREF(name); /* the dict holds it */
    }
    Py_DECREF(type_raw);
    /* built in the Python tuple's order, stopping at the first failure as Python does */
    PyObject *fields[11] = {NULL};
    int built = 0;
    for (; built < 11; built++) {
        PyObject *field;
        switch (built) {
        case 0: field = Py_NewRef(c->topic); break;
        case 1: field = Py_NewRef(c->partition); break;
        case 2: field = moldau_exact_sum(c->base_offset, delta); break;
        case 3:
            field = c->append_time != Py_None ? Py_NewRef(c->append_time)
                                              : moldau_exact_sum(c->base_ts, ts_delta);
            break;
        case 4: field = Py_NewRef(c->last_stream); break;
        case 5: field = decimal(b, spans[VERSION][0], spans[VERSION][1]); break;
        case 6: field = Py_NewRef(name); break;
        case 7:
            field = spans[TYPE_VERSION][0] >= 0 && spans[TYPE_VERSION][1] > spans[TYPE_VERSION][0]
                        ? decimal(b, spans[TYPE_VERSION][0], spans[TYPE_VERSION][1])
                        : PyLong_FromLong(1);
            break;
        case 8:
            field = PyUnicode_DecodeASCII((const char *)b->d + spans[ID][0],
                                          spans[ID][1] - spans[ID][0], "strict");
            break;
        case 9: field = slice(b, value_start, value_stop); break;
        default:
            field = spans[METADATA][0] >= 0 ? slice(b, spans[METADATA][0], spans[METADATA][1])
                                            : PyBytes_FromStringAndSize(NULL, 0);
        }
        if (field == NULL) {
            break;
        }
        fields[built] = field;
    }
    PyTypeObject *type = (PyTypeObject *)c->event_type;
    PyObject *event = built == 11 ? type->tp_alloc(type, 11) : NULL;
    if (event == NULL) {
        for (int i = 0; i < 11; i++) {
            Py_XDECREF(fields[i]);
        }
        return -1;
    }
    for (int i = 0; i < 11; i++) {
        PyTuple_SET_ITEM(event, i, fields[i]);
    }
    int appended = PyList_Append(c->out, event);
    Py_DECREF(event);
    return appended;
}

static int
loop(Context *c, const Buf *b, Py_ssize_t pos, Py_ssize_t limit, Py_ssize_t count,
     int *skipped)
{
    for (Py_ssize_t index = 0; index < count; index++) {
        int64_t length, ts_delta, delta, klen, vlen;
        unsigned int byte;
        if (loose_length(b, &pos, &length) < 0) {
            return -1;
        }
        Py_ssize_t end = pos + (Py_ssize_t)length;
        if (end > limit || length < 6) {
            return fail("record length overruns the batch");
        }
        if (byte_at(b, pos + 1, &byte) < 0) { /* pos: attributes, unused */
            return -1;
        }
        if (byte < 0x80) {
            ts_delta = (int64_t)(byte >> 1) ^ -(int64_t)(byte & 1);
            pos += 2;
        }
        else if (varint(b, pos + 1, 10, 64, &ts_delta, &pos) < 0) {
            return -1;
        }
        if (loose_length(b, &pos, &delta) < 0) {
            return -1;
        }
        if (c->base_offset + delta < c->first_offset) {
            pos = end;
            continue;
        }
        if (byte_at(b, pos, &byte) < 0) {
            return -1;
        }
        if (byte < 0x80) {
            klen = (int64_t)(byte >> 1) ^ -(int64_t)(byte & 1);
            pos += 1;
        }
        else if (varint(b, pos, 5, 32, &klen, &pos) < 0) {
            return -1;
        }
        Py_ssize_t key_start = pos;
        if (klen > 0) {
            pos += (Py_ssize_t)klen;
        }
        else {
            klen = 0;
        }
        if (byte_at(b, pos, &byte) < 0) {
            return -1;
        }
        if (byte < 0x80) {
            vlen = (int64_t)(byte >> 1) ^ -(int64_t)(byte & 1);
            pos += 1;
        }
        else if (loose_length(b, &pos, &vlen) < 0) {
            return -1;
        }
        if (vlen < 0 || klen == 0) { /* null value: a stream-control record */
            *skipped += 1;
            pos = end;
            continue;
        }
        Py_ssize_t value_start = pos, value_stop = pos + (Py_ssize_t)vlen;
        pos += (Py_ssize_t)vlen;
        Py_ssize_t spans[SLOTS][2];
        int found;
        if (headers(b, pos, end, spans, &found) < 0) {
            return -1;
        }
        pos = end;
        if (!found) {
            *skipped += 1;
            continue;
        }
        if (emit(c, b, key_start, (Py_ssize_t)klen, delta, ts_delta, value_start,
                 value_stop, spans, skipped) < 0) {
            return -1;
        }
    }
    if (pos != limit) {
        return fail("the records do not fill the batch exactly");
    }
    return 0;
}

PyDoc_STRVAR(decode_doc,
"decode(buf, pos, limit, count, base_offset, base_ts, append_time, topic, partition,\n"
"       first_offset, out, matcher, event_type) -> skipped\n\n"
"_replay_codec._decode in C: appends event_type tuples to out; ValueError when the\n"
"records do not parse.");

static PyObject *
decode(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, limit, count;
    Context c = {0};
    if (!PyArg_ParseTuple(args, "y*nnnLLOOOLO!OO", &view, &pos, &limit, &count,
                          &c.base_offset, &c.base_ts, &c.append_time, &c.topic, &c.partition,
                          &c.first_offset, &PyList_Type, &c.out, &c.matcher, &c.event_type)) {
        return NULL;
    }
    if (!PyType_Check(c.event_type) ||
        !PyType_IsSubtype((PyTypeObject *)c.event_type, &PyTuple_Type)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "event_type must be a tuple subclass");
        return NULL;
    }
    Buf b = {(const unsigned char *)view.buf, view.len};
    int skipped = 0;
    c.names = PyDict_New();
    int rc = c.names == NULL ? -1 : loop(&c, &b, pos, limit, count, &skipped);
    Py_XDECREF(c.names);
    Py_XDECREF(c.last_key);
    Py_XDECREF(c.last_stream);
    PyBuffer_Release(&view);
    return rc < 0 ? NULL : PyLong_FromLong(skipped);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_creplay",
    "The replay decoder's record loop in C (see _replay_codec.py for the reference).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__creplay(void)
{
    return PyModule_Create(&module);
}
