/*
 * One pipelined append written as protobuf wire bytes, in C (see moldau._eventstore_pipeline).
 *
 * ``encode(correlation_id, topic, stream, expected_field, expected_value, events)`` returns
 * the bytes protobuf writes for field 1 (``appends``) of an AppendStreamRequest holding
 * ``PipelinedAppend(correlation_id, AppendToStreamRequest(topic, stream, exact|special,
 * events))``: tag, length, body; a message is the concatenation of such fields.  The bytes
 * are those of ``SerializeToString`` (fields in number order, proto3 defaults left out, the
 * oneof member always written); a property test compares them.  ``expected_field`` is 3
 * (exact) or 4 (special), already checked by the caller.
 *
 * It returns None for anything but the plain case, and the caller then builds the append
 * with protobuf (which raises the precise error): an event that is not a slotted object with
 * ``type`` (str), ``data`` and ``metadata`` (bytes), ``type_version`` (int in int32 range) and
 * ``event_id`` (a uuid.UUID, whose ``int`` is read), or a str that is not valid UTF-8.
 */
#include "_native.h"
#include <string.h>

#define UUID_TEXT MOLDAU_UUID_TEXT

static PyObject *s_type, *s_data, *s_metadata, *s_type_version, *s_event_id, *s_int, *s_64;
static PyObject *uuid_type;

typedef struct {
    const char *type, *data, *metadata;
    Py_ssize_t type_len, data_len, metadata_len;
    int64_t type_version;
    char id[UUID_TEXT];
    Py_ssize_t size; /* of the EventToAppend body */
} Event;

static inline char *
put_varint(char *out, uint64_t value)
{
    return (char *)moldau_put_uvarint((unsigned char *)out, value);
}

/* a length-delimited field of one-byte tag, left out when empty (a proto3 default) */
static inline Py_ssize_t
bytes_field_size(Py_ssize_t length)
{
    return length ? 1 + moldau_uvarint_size((uint64_t)length) + length : 0;
}

static inline char *
put_bytes_field(char *out, int field, const char *data, Py_ssize_t length)
{
    if (length == 0) {
        return out;
    }
    *out++ = (char)(field << 3 | 2);
    out = put_varint(out, (uint64_t)length);
    memcpy(out, data, (size_t)length);
    return out + length;
}

/* the UTF-8 of a str, or 0 (and no error set) when it is not the plain case */
static int
utf8(PyObject *text, const char **out, Py_ssize_t *length)
{
    if (!PyUnicode_CheckExact(text)) {
        return 0;
    }
    *out = PyUnicode_AsUTF8AndSize(text, length);
    if (*out == NULL) {
        PyErr_Clear(); /* surrogates: protobuf says what is wrong */
        return 0;
    }
    return 1;
}

enum { PLAIN = 1, NOT_PLAIN = 0, FAILED = -1 };

/* the UUID's canonical text from its 128-bit ``int`` */
static int
uuid_text(PyObject *event_id, char *out)
{
    if (Py_TYPE(event_id) != (PyTypeObject *)uuid_type) {
        return NOT_PLAIN; /* a subclass may format itself differently */
    }
    PyObject *value = PyObject_GetAttr(event_id, s_int);
    if (value == NULL) {
        return FAILED;
    }
    if (!PyLong_CheckExact(value)) {
        Py_DECREF(value);
        return NOT_PLAIN;
    }
    uint64_t low = PyLong_AsUnsignedLongLongMask(value);
    PyObject *shifted = PyNumber_Rshift(value, s_64);
    Py_DECREF(value);
    if (shifted == NULL) {
        PyErr_Clear();
        return NOT_PLAIN;
    }
    uint64_t high = PyLong_AsUnsignedLongLong(shifted); /* fails past 128 bits */
    Py_DECREF(shifted);
    if (high == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return NOT_PLAIN;
    }
    unsigned char bytes[16];
    for (int i = 0; i < 8; i++) {
        bytes[i] = (unsigned char)(high >> (56 - 8 * i));
        bytes[8 + i] = (unsigned char)(low >> (56 - 8 * i));
    }
    moldau_uuid_text(bytes, out);
    return PLAIN;
}

/* reads one event; the references it borrows stay alive through `held` */
static int
read_event(PyObject *object, Event *event, PyObject *held)
{
    PyObject *fields[5];
    PyObject *names[5] = {s_type, s_data, s_metadata, s_type_version, s_event_id};
    int result = NOT_PLAIN;
    int got = 0;
    for (; got < 5; got++) {
        fields[got] = PyObject_GetAttr(object, names[got]);
        if (fields[got] == NULL) {
            PyErr_Clear(); /* not an EventData: protobuf's path reports it */
            goto done;
        }
    }
    if (PyList_Append(held, fields[0]) < 0 || PyList_Append(held, fields[1]) < 0
        || PyList_Append(held, fields[2]) < 0) {
        result = FAILED;
        goto done;
    }
    if (!utf8(fields[0], &event->type, &event->type_len) || !PyBytes_CheckExact(fields[1])
        || !PyBytes_CheckExact(fields[2]) || !PyLong_CheckExact(fields[3])) {
        goto done;
    }
    event->data = PyBytes_AS_STRING(fields[1]);
    event->data_len = PyBytes_GET_SIZE(fields[1]);
    event->metadata = PyBytes_AS_STRING(fields[2]);
    event->metadata_len = PyBytes_GET_SIZE(fields[2]);
    int overflow;
    long long type_version = PyLong_AsLongLongAndOverflow(fields[3], &overflow);
    if (overflow || type_version < INT32_MIN || type_version > INT32_MAX) {
        goto done;
    }
    event->type_version = type_version;
    result = uuid_text(fields[4], event->id);
    if (result != PLAIN) {
        goto done;
    }
    /* int32 -1 is written as a ten-byte varint, as protobuf does for negative int32 */
    uint64_t wire_version = (uint64_t)(int64_t)type_version;
    event->size = bytes_field_size(event->type_len) + bytes_field_size(event->data_len)
                  + bytes_field_size(event->metadata_len)
                  + (type_version ? 1 + moldau_uvarint_size(wire_version) : 0)
                  + bytes_field_size(UUID_TEXT);
done:
    for (int i = 0; i < got; i++) {
        Py_DECREF(fields[i]);
    }
    return result;
}

PyDoc_STRVAR(encode_doc,
"encode(correlation_id, topic, stream, expected_field, expected_value, events) -> bytes | None\n\n"
"One ``appends`` field of an AppendStreamRequest (see the module comment).");

static PyObject *
encode(PyObject *module, PyObject *args)
{
    unsigned long long correlation_id;
    PyObject *topic, *stream, *events;
    int expected_field;
    long long expected_value;
    if (!PyArg_ParseTuple(args, "KOOiLO", &correlation_id, &topic, &stream, &expected_field,
                          &expected_value, &events)) {
        return NULL;
    }
    if ((expected_field != 3 && expected_field != 4) || expected_value < 0) {
        PyErr_SetString(PyExc_ValueError, "expected_field is 3 or 4, with a value >= 0");
        return NULL;
    }
    const char *topic_utf8, *stream_utf8;
    Py_ssize_t topic_len, stream_len;
    if (!utf8(topic, &topic_utf8, &topic_len) || !utf8(stream, &stream_utf8, &stream_len)) {
        Py_RETURN_NONE;
    }
    PyObject *sequence = PySequence_Fast(events, "events must be iterable");
    if (sequence == NULL) {
        return NULL;
    }
    PyObject *held = PyList_New(0);
    PyObject *result = NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    Event *parsed = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(Event));
    if (held == NULL || parsed == NULL) {
        if (parsed == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    Py_ssize_t request_size = bytes_field_size(topic_len) + bytes_field_size(stream_len)
                              + 1 + moldau_uvarint_size((uint64_t)expected_value);
    for (Py_ssize_t n = 0; n < count; n++) {
        int got = read_event(PySequence_Fast_GET_ITEM(sequence, n), &parsed[n], held);
        if (got == FAILED) {
            goto done;
        }
        if (got == NOT_PLAIN) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        request_size += 1 + moldau_uvarint_size((uint64_t)parsed[n].size) + parsed[n].size;
    }
    Py_ssize_t item_size = (correlation_id ? 1 + moldau_uvarint_size(correlation_id) : 0)
                           + 1 + moldau_uvarint_size((uint64_t)request_size) + request_size;
    Py_ssize_t total = 1 + moldau_uvarint_size((uint64_t)item_size) + item_size;
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    char *out = PyBytes_AS_STRING(result);
    *out++ = 0x0a; /* AppendStreamRequest.appends */
    out = put_varint(out, (uint64_t)item_size);
    if (correlation_id) {
        *out++ = 0x08;
        out = put_varint(out, correlation_id);
    }
    *out++ = 0x12; /* PipelinedAppend.append */
    out = put_varint(out, (uint64_t)request_size);
    out = put_bytes_field(out, 1, topic_utf8, topic_len);
    out = put_bytes_field(out, 2, stream_utf8, stream_len);
    *out++ = (char)(expected_field << 3);
    out = put_varint(out, (uint64_t)expected_value);
    for (Py_ssize_t n = 0; n < count; n++) {
        Event *e = &parsed[n];
        *out++ = 0x2a; /* AppendToStreamRequest.events */
        out = put_varint(out, (uint64_t)e->size);
        out = put_bytes_field(out, 1, e->type, e->type_len);
        out = put_bytes_field(out, 2, e->data, e->data_len);
        out = put_bytes_field(out, 3, e->metadata, e->metadata_len);
        if (e->type_version) {
            *out++ = 0x20;
            out = put_varint(out, (uint64_t)e->type_version);
        }
        out = put_bytes_field(out, 5, e->id, UUID_TEXT);
    }
    if (out != PyBytes_AS_STRING(result) + total) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_SystemError, "append sizes disagree");
    }
done:
    PyMem_Free(parsed);
    Py_XDECREF(held);
    Py_DECREF(sequence);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cappend",
    "Pipelined appends written as protobuf wire bytes in C (see _eventstore_pipeline).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cappend(void)
{
    s_type = PyUnicode_InternFromString("type");
    s_data = PyUnicode_InternFromString("data");
    s_metadata = PyUnicode_InternFromString("metadata");
    s_type_version = PyUnicode_InternFromString("type_version");
    s_event_id = PyUnicode_InternFromString("event_id");
    s_int = PyUnicode_InternFromString("int");
    s_64 = PyLong_FromLong(64);
    PyObject *uuid_module = PyImport_ImportModule("uuid");
    if (uuid_module == NULL) {
        return NULL;
    }
    uuid_type = PyObject_GetAttrString(uuid_module, "UUID");
    Py_DECREF(uuid_module);
    if (uuid_type == NULL || s_type == NULL || s_data == NULL || s_metadata == NULL
        || s_type_version == NULL || s_event_id == NULL || s_int == NULL || s_64 == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
