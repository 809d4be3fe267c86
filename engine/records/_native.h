/*
 * What the C loops share (engine/records/_crecords.c, engine/views/routing/_creframe.c,
 * engine/views/eventstore/_cevents.c, grpc_api/_cappend.c, clients/python/moldau/_creplay.c
 * and _cappend.c): Kafka's zig-zag varints read the way engine.records.varint reads them,
 * unsigned (protobuf) varints written, UUID text, and exact int addition.
 */
#ifndef MOLDAU_NATIVE_H
#define MOLDAU_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

enum {
    ZIGZAG_OK = 0,
    ZIGZAG_TRUNCATED = -1, /* the buffer ends inside it */
    ZIGZAG_TOO_LONG = -2,  /* more than max_bytes bytes */
    ZIGZAG_TOO_BIG = -3,   /* the unsigned value does not fit in `bits` bits */
};

/* The zig-zag varint at d[*pos], read up to `limit`: at most max_bytes bytes (5 for a
 * varint, 10 for a varlong) whose unsigned value is below 2**bits (32 or 64), as
 * engine.records.varint.decode_varint / decode_varlong accept them. On ZIGZAG_OK *out is
 * the signed value and *pos is past it; otherwise nothing changes. */
static inline int
moldau_zigzag(const unsigned char *d, Py_ssize_t limit, Py_ssize_t *pos, int max_bytes,
              int bits, int64_t *out)
{
    uint64_t value = 0;
    Py_ssize_t p = *pos;
    if (p < 0) {
        return ZIGZAG_TRUNCATED;
    }
    for (int i = 0; i < max_bytes; i++) {
        if (p >= limit) {
            return ZIGZAG_TRUNCATED;
        }
        uint64_t byte = d[p++];
        int shift = 7 * i;
        uint64_t part = byte & 0x7F;
        if (shift + 7 > bits && (part >> (bits - shift)) != 0) {
            /* bits at or above `bits`: too big now, or (continued) too big or too long */
            return ZIGZAG_TOO_BIG;
        }
        value |= part << shift;
        if (byte < 0x80) {
            *pos = p;
            *out = (int64_t)(value >> 1) ^ -(int64_t)(value & 1);
            return ZIGZAG_OK;
        }
    }
    return ZIGZAG_TOO_LONG;
}

/* a + b as a Python int, exact also where int64 would overflow (as Python adds) */
static inline PyObject *
moldau_exact_sum(long long a, int64_t b)
{
    long long total;
    if (!__builtin_add_overflow(a, (long long)b, &total)) {
        return PyLong_FromLongLong(total);
    }
    PyObject *left = PyLong_FromLongLong(a), *right = PyLong_FromLongLong((long long)b);
    PyObject *result = left && right ? PyNumber_Add(left, right) : NULL;
    Py_XDECREF(left);
    Py_XDECREF(right);
    return result;
}

/* bytes of the unsigned LEB128 varint of value (protobuf's; Kafka's zig-zag of a
 * non-negative n is this of n << 1) */
static inline Py_ssize_t
moldau_uvarint_size(uint64_t value)
{
    Py_ssize_t n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

/* writes the unsigned LEB128 varint of value at out; returns the byte after it */
static inline unsigned char *
moldau_put_uvarint(unsigned char *out, uint64_t value)
{
    while (value >= 0x80) {
        *out++ = (unsigned char)(value | 0x80);
        value >>= 7;
    }
    *out++ = (unsigned char)value;
    return out;
}

#define MOLDAU_UUID_TEXT 36

/* the canonical lower-case text of a UUID's 16 bytes (big-endian), as str(uuid.UUID) */
static inline void
moldau_uuid_text(const unsigned char bytes[16], char out[MOLDAU_UUID_TEXT])
{
    static const char digits[] = "0123456789abcdef";
    int at = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[at++] = '-';
        }
        out[at++] = digits[bytes[i] >> 4];
        out[at++] = digits[bytes[i] & 0x0F];
    }
}

#endif
