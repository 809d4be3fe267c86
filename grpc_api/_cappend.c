/*
 * AppendStream's requests read straight from their protobuf wire bytes (see
 * grpc_api.append_wire, which holds the Python reference this mirrors).
 *
 * ``parse(raw, packed_type, any, no_stream, stream_exists)`` returns, for an
 * ``AppendStreamRequest`` in ``raw``, a list with one tuple per pipelined append:
 * ``(correlation_id, topic, stream, expected_version, packed_type(raw, spans, ids, size))``,
 * the special expected versions given as the engine's values.  It returns None for anything
 * that is not the plain, valid case, and the caller then parses the message with protobuf and
 * converts it the Python way (which gives each error its precise message): a field not in the
 * schema, a field with the wrong wire type or repeated where protobuf would merge or override,
 * invalid UTF-8 in a string field, an append without its expected version or with a negative
 * or unknown one, an event type that is empty, over 256 bytes or starts with '$', a type
 * version over 2**31 - 1, an event id that is not canonical lower-case UUID text (empty is
 * fine: a random one is chosen, as uuid.uuid4 would) or an id repeated within an append.
 * How many events an append may carry is the engine's to check.
 */
#include "_native.h"
#include <string.h>
#include <sys/random.h>

#define MAX_TYPE_BYTES 256
#define UUID_TEXT MOLDAU_UUID_TEXT

typedef struct {
    int64_t type_at, type_len, data_at, data_len, meta_at, meta_len, type_version;
} Span;

typedef struct {
    const unsigned char *d;
    Py_ssize_t pos, end;
} Cursor;

/* a protobuf varint (at most 10 bytes, 64 bits); 0 when malformed */
static inline int
varint(Cursor *c, uint64_t *out)
{
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (c->pos >= c->end) {
            return 0;
        }
        unsigned char byte = c->d[c->pos++];
        if (i == 9 && byte > 1) {
            return 0;
        }
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (byte < 0x80) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* the next field's number and wire type; 0 when malformed */
static inline int
tag(Cursor *c, uint32_t *field, uint32_t *wire_type)
{
    uint64_t value;
    if (!varint(c, &value) || value > UINT32_MAX || (value >> 3) == 0) {
        return 0;
    }
    *field = (uint32_t)(value >> 3);
    *wire_type = (uint32_t)(value & 7);
    return 1;
}

/* a length-delimited field's body as [*at, *at + *length); 0 when it overruns */
static inline int
delimited(Cursor *c, Py_ssize_t *at, Py_ssize_t *length)
{
    uint64_t value;
    if (!varint(c, &value) || value > (uint64_t)(c->end - c->pos)) {
        return 0;
    }
    *at = c->pos;
    *length = (Py_ssize_t)value;
    c->pos += (Py_ssize_t)value;
    return 1;
}

/* strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as protobuf checks */
static int
utf8_ok(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int more;
        unsigned char low = 0x80, high = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) {
                low = 0xA0;
            }
            else if (c == 0xED) {
                high = 0x9F;
            }
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) {
                low = 0x90;
            }
            else if (c == 0xF4) {
                high = 0x8F;
            }
        }
        else {
            return 0;
        }
        if (n - i <= more || s[i + 1] < low || s[i + 1] > high) {
            return 0;
        }
        for (int k = 2; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += more + 1;
    }
    return 1;
}

static PyObject *
text(const unsigned char *s, Py_ssize_t n)
{
    if (!utf8_ok(s, n)) {
        return Py_None; /* borrowed marker: not the plain case */
    }
    return PyUnicode_DecodeUTF8((const char *)s, n, "strict");
}

static inline int
hex_lower(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int
canonical_uuid(const unsigned char *s, Py_ssize_t n)
{
    if (n != UUID_TEXT) {
        return 0;
    }
    for (int i = 0; i < UUID_TEXT; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return 0;
            }
        }
        else if (!hex_lower(s[i])) {
            return 0;
        }
    }
    return 1;
}

/* a version 4 UUID's canonical text, as str(uuid.uuid4()) */
static PyObject *
random_uuid(void)
{
    unsigned char bytes[16];
    size_t got = 0;
    while (got < sizeof(bytes)) {
        ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
        if (n < 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        got += (size_t)n;
    }
    bytes[6] = (unsigned char)((bytes[6] & 0x0F) | 0x40);
    bytes[8] = (unsigned char)((bytes[8] & 0x3F) | 0x80);
    char out[UUID_TEXT];
    moldau_uuid_text(bytes, out);
    return PyBytes_FromStringAndSize(out, UUID_TEXT);
}

enum { PLAIN = 1, NOT_PLAIN = 0, FAILED = -1 };

/* one EventToAppend into *span and its id into ids */
static int
event(Cursor *c, Span *span, PyObject *ids)
{
    unsigned seen = 0;
    memset(span, 0, sizeof(*span));
    Py_ssize_t id_at = 0, id_len = 0;
    while (c->pos < c->end) {
        uint32_t field, wire_type;
        if (!tag(c, &field, &wire_type) || field > 5 || (seen & (1u << field))) {
            return NOT_PLAIN;
        }
        seen |= 1u << field;
        if (field == 4) {
            uint64_t value;
            if (wire_type != 0 || !varint(c, &value) || value > INT32_MAX) {
                return NOT_PLAIN;
            }
            span->type_version = (int64_t)value;
            continue;
        }
        Py_ssize_t at, length;
        if (wire_type != 2 || !delimited(c, &at, &length)) {
            return NOT_PLAIN;
        }
        switch (field) {
        case 1:
            span->type_at = at;
            span->type_len = length;
            break;
        case 2:
            span->data_at = at;
            span->data_len = length;
            break;
        case 3:
            span->meta_at = at;
            span->meta_len = length;
            break;
        default:
            id_at = at;
            id_len = length;
        }
    }
    const unsigned char *type = c->d + span->type_at;
    if (span->type_len < 1 || span->type_len > MAX_TYPE_BYTES || type[0] == '$'
        || !utf8_ok(type, span->type_len)) {
        return NOT_PLAIN;
    }
    if (span->type_version == 0) {
        span->type_version = 1; /* unset: the current shape, as the Python path reads it */
    }
    PyObject *id;
    if (id_len == 0) {
        id = random_uuid();
    }
    else if (canonical_uuid(c->d + id_at, id_len)) {
        id = PyBytes_FromStringAndSize((const char *)c->d + id_at, id_len);
    }
    else {
        return NOT_PLAIN;
    }
    if (id == NULL) {
        return FAILED;
    }
    int failed = PyList_Append(ids, id);
    Py_DECREF(id);
    return failed ? FAILED : PLAIN;
}

typedef struct {
    PyObject *packed_type;
    PyObject *special[4]; /* index: the ExpectedVersion enum value; [0] unused */
    const unsigned char *topic_bytes; /* the previous append's topic, to share its str */
    Py_ssize_t topic_len;
    PyObject *topic;
    Span *spans;
    Py_ssize_t span_room;
} Parser;

/* one AppendToStreamRequest; *out is the tuple's tail (topic, stream, expected, packed) */
static int
append(Parser *p, PyObject *raw, Cursor *c, PyObject **topic, PyObject **stream,
       PyObject **expected, PyObject **packed)
{
    unsigned seen = 0;
    Py_ssize_t count = 0, size = 0;
    PyObject *ids = PyList_New(0);
    if (ids == NULL) {
        return FAILED;
    }
    int result = NOT_PLAIN;
    while (c->pos < c->end) {
        uint32_t field, wire_type;
        if (!tag(c, &field, &wire_type) || field > 5) {
            goto done;
        }
        if (field != 5) {
            if (seen & ((field == 3 || field == 4) ? (1u << 3 | 1u << 4) : (1u << field))) {
                goto done; /* repeated, or both halves of the oneof */
            }
            seen |= 1u << field;
        }
        if (field == 3 || field == 4) {
            uint64_t value;
            if (wire_type != 0 || !varint(c, &value)) {
                goto done;
            }
            if (field == 3) {
                if (value > INT64_MAX) {
                    goto done; /* negative */
                }
                *expected = PyLong_FromUnsignedLongLong(value);
            }
            else {
                if (value < 1 || value > 3) {
                    goto done;
                }
                *expected = Py_NewRef(p->special[value]);
            }
            if (*expected == NULL) {
                result = FAILED;
                goto done;
            }
            continue;
        }
        Py_ssize_t at, length;
        if (wire_type != 2 || !delimited(c, &at, &length)) {
            goto done;
        }
        const unsigned char *s = c->d + at;
        if (field == 1) {
            if (p->topic != NULL && length == p->topic_len
                && memcmp(s, p->topic_bytes, (size_t)length) == 0) {
                *topic = Py_NewRef(p->topic);
                continue;
            }
            PyObject *value = text(s, length);
            if (value == Py_None) {
                goto done;
            }
            if (value == NULL) {
                result = FAILED;
                goto done;
            }
            *topic = value;
            Py_XSETREF(p->topic, Py_NewRef(value));
            p->topic_bytes = s;
            p->topic_len = length;
        }
        else if (field == 2) {
            PyObject *value = text(s, length);
            if (value == Py_None) {
                goto done;
            }
            if (value == NULL) {
                result = FAILED;
                goto done;
            }
            *stream = value;
        }
        else {
            if (count == p->span_room) {
                Py_ssize_t room = p->span_room ? 2 * p->span_room : 64;
                Span *grown = PyMem_Realloc(p->spans, (size_t)room * sizeof(Span));
                if (grown == NULL) {
                    PyErr_NoMemory();
                    result = FAILED;
                    goto done;
                }
                p->spans = grown;
                p->span_room = room;
            }
            Cursor inner = {c->d, at, at + length};
            int got = event(&inner, &p->spans[count], ids);
            if (got != PLAIN) {
                result = got;
                goto done;
            }
            Span *span = &p->spans[count];
            size += span->data_len + span->meta_len + span->type_len + 80;
            count++;
        }
    }
    if (*expected == NULL) {
        goto done; /* no expected version */
    }
    if (*topic == NULL) {
        *topic = PyUnicode_FromStringAndSize("", 0);
    }
    if (*stream == NULL) {
        *stream = PyUnicode_FromStringAndSize("", 0);
    }
    if (*topic == NULL || *stream == NULL) {
        result = FAILED;
        goto done;
    }
    if (count > 1) {
        PyObject *distinct = PySet_New(ids);
        if (distinct == NULL) {
            result = FAILED;
            goto done;
        }
        Py_ssize_t unique = PySet_GET_SIZE(distinct);
        Py_DECREF(distinct);
        if (unique != count) {
            goto done; /* an id twice in one append */
        }
    }
    PyObject *spans = PyBytes_FromStringAndSize((const char *)p->spans,
                                                count * (Py_ssize_t)sizeof(Span));
    if (spans == NULL) {
        result = FAILED;
        goto done;
    }
    *packed = PyObject_CallFunction(p->packed_type, "OOOn", raw, spans, ids, size);
    Py_DECREF(spans);
    result = *packed == NULL ? FAILED : PLAIN;
done:
    Py_DECREF(ids);
    return result;
}

/* one PipelinedAppend as its tuple into items */
static int
pipelined(Parser *p, PyObject *raw, Cursor *c, PyObject *items)
{
    uint64_t correlation_id = 0;
    int seen_id = 0, seen_append = 0;
    PyObject *topic = NULL, *stream = NULL, *expected = NULL, *packed = NULL;
    int result = NOT_PLAIN;
    while (c->pos < c->end) {
        uint32_t field, wire_type;
        if (!tag(c, &field, &wire_type)) {
            goto done;
        }
        if (field == 1 && wire_type == 0 && !seen_id) {
            seen_id = 1;
            if (!varint(c, &correlation_id)) {
                goto done;
            }
        }
        else if (field == 2 && wire_type == 2 && !seen_append) {
            seen_append = 1;
            Py_ssize_t at, length;
            if (!delimited(c, &at, &length)) {
                goto done;
            }
            Cursor inner = {c->d, at, at + length};
            int got = append(p, raw, &inner, &topic, &stream, &expected, &packed);
            if (got != PLAIN) {
                result = got;
                goto done;
            }
        }
        else {
            goto done;
        }
    }
    if (!seen_append) {
        goto done;
    }
    PyObject *id = PyLong_FromUnsignedLongLong(correlation_id);
    if (id == NULL) {
        result = FAILED;
        goto done;
    }
    PyObject *item = PyTuple_Pack(5, id, topic, stream, expected, packed);
    Py_DECREF(id);
    if (item == NULL || PyList_Append(items, item) < 0) {
        Py_XDECREF(item);
        result = FAILED;
        goto done;
    }
    Py_DECREF(item);
    result = PLAIN;
done:
    Py_XDECREF(topic);
    Py_XDECREF(stream);
    Py_XDECREF(expected);
    Py_XDECREF(packed);
    return result;
}

PyDoc_STRVAR(parse_doc,
"parse(raw, packed_type, any, no_stream, stream_exists) -> list | None\n\n"
"The pipelined appends of an AppendStreamRequest, or None (see the module comment).");

static PyObject *
parse(PyObject *module, PyObject *args)
{
    PyObject *raw;
    Parser p = {0};
    if (!PyArg_ParseTuple(args, "O!OOOO", &PyBytes_Type, &raw, &p.packed_type,
                          &p.special[1], &p.special[2], &p.special[3])) {
        return NULL;
    }
    Cursor c = {(const unsigned char *)PyBytes_AS_STRING(raw), 0, PyBytes_GET_SIZE(raw)};
    PyObject *items = PyList_New(0);
    if (items == NULL) {
        return NULL;
    }
    int result = PLAIN;
    while (c.pos < c.end && result == PLAIN) {
        uint32_t field, wire_type;
        Py_ssize_t at, length;
        if (!tag(&c, &field, &wire_type) || field != 1 || wire_type != 2
            || !delimited(&c, &at, &length)) {
            result = NOT_PLAIN;
            break;
        }
        Cursor inner = {c.d, at, at + length};
        result = pipelined(&p, raw, &inner, items);
    }
    PyMem_Free(p.spans);
    Py_XDECREF(p.topic);
    if (result == PLAIN) {
        return items;
    }
    Py_DECREF(items);
    if (result == FAILED) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, parse_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cappend",
    "AppendStream requests parsed from their wire bytes (see grpc_api.append_wire).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cappend(void)
{
    return PyModule_Create(&module);
}
