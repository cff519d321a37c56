/*
 * quicflow.crypto._native -- stream_run: seal_stream_run(table, buf, key, pn, pn_len,
 * stream_id, data, start, end, offset, off_len, data_cap, count, fin[, dcid]), the
 * sender's bulk path. Appends to the bytearray buf up to count sealed short-header
 * packets, each one STREAM frame of stream_id carrying the next data_cap bytes of
 * data[start:end], sealed with the table entry of key:
 *   0x40 | key phase | (pn_len - 1), dcid (default: key), pn truncated to pn_len bytes
 *   0x0E | FIN, stream_id (minimal varint), stream offset (varint of off_len bytes),
 *   length (2-byte varint), data, PADDING up to pn_len + payload = 4, 16-byte tag.
 * FIN only on the packet that carries byte `end`, when fin is true. Returns the number of
 * packets built. Bit-identical to SoftwareOffloadEngine.seal_stream_run (offload.py), the
 * reference; argument checks and their messages mirror offload.stream_run_count.
 *
 * buf is resized once for the whole run and trimmed to what was written at the end (a
 * live export of buf, e.g. a memoryview, makes the resize fail with BufferError).
 */
#include "native.h"

#define VARINT_MAX (((uint64_t)1 << 62) - 1)

/* the length bits of a varint of n = 1, 2, 4 or 8 bytes, in place */
static inline uint64_t
varint_prefix(int n)
{
    return (uint64_t)(n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3) << (8 * n - 2);
}

/* big-endian value in n bytes */
static inline void
put_be(unsigned char *p, uint64_t v, int n)
{
    int k;
    for (k = n - 1; k >= 0; k--) {
        p[k] = (unsigned char)v;
        v >>= 8;
    }
}

static int
arg_u64(PyObject *obj, uint64_t *out, const char *msg)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || v < 0 || (uint64_t)v > VARINT_MAX) {
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

PyObject *
mod_seal_stream_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *bufobj, *cid, *dcid;
    CidState *state;
    Py_buffer data = {0};
    Py_ssize_t pn_len, off_len, start, end, data_cap, count, old_len, cid_len, n, i, pos;
    Py_ssize_t header_len, frame_head, max_packet, at;
    uint64_t pn, sid, offset;
    unsigned char *out, sid_bytes[8];
    const unsigned char *src;
    int fin, sid_len;
    uint64_t off_prefix;

    (void)module;
    if (nargs != 14 && nargs != 15) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_stream_run(table, buf, key, pn, pn_len, stream_id, data, start, "
                        "end, offset, off_len, data_cap, count, fin[, dcid])");
        return NULL;
    }
    table = args[0];
    bufobj = args[1];
    cid = args[2];
    dcid = (nargs == 15 && args[14] != Py_None) ? args[14] : cid;
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "table must be a dict");
        return NULL;
    }
    if (!PyByteArray_Check(bufobj)) {
        PyErr_SetString(PyExc_TypeError, "buf must be a bytearray");
        return NULL;
    }
    if (!PyBytes_Check(cid)) {
        PyErr_SetString(PyExc_TypeError, "cid must be bytes");
        return NULL;
    }
    state = lookup(table, cid);
    if (state == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, cid);
        }
        return NULL;
    }
    if (!PyBytes_Check(dcid)) {
        PyErr_SetString(PyExc_TypeError, "dcid must be bytes");
        return NULL;
    }
    cid_len = PyBytes_GET_SIZE(dcid);
    if (as_ssize(args[4], &pn_len) < 0 || as_ssize(args[7], &start) < 0 ||
        as_ssize(args[8], &end) < 0 || as_ssize(args[10], &off_len) < 0 ||
        as_ssize(args[11], &data_cap) < 0 || as_ssize(args[12], &count) < 0) {
        return NULL;
    }
    fin = PyObject_IsTrue(args[13]);
    if (fin < 0) {
        return NULL;
    }
    /* the checks of offload.stream_run_count, in its order */
    if (pn_len < 1 || pn_len > 4) {
        PyErr_SetString(PyExc_ValueError, "pn_len must be 1..4");
        return NULL;
    }
    if (off_len != 1 && off_len != 2 && off_len != 4 && off_len != 8) {
        PyErr_SetString(PyExc_ValueError, "off_len must be 1, 2, 4 or 8");
        return NULL;
    }
    if (data_cap <= 0 || data_cap > 0x3FFF) {
        PyErr_SetString(PyExc_ValueError, "data_cap must be 1..16383");
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return NULL;
    }
    if (PyObject_GetBuffer(args[6], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || start > end || end > data.len) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= start <= end <= len(data)");
        goto error;
    }
    if (arg_u64(args[5], &sid, "stream_id must be 0..2**62-1") < 0) {
        goto error;
    }
    if (arg_u64(args[9], &offset, "stream offsets do not fit in off_len bytes") < 0 ||
        offset + (uint64_t)(end - start) >= (uint64_t)1 << (8 * off_len - 2)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "stream offsets do not fit in off_len bytes");
        }
        goto error;
    }
    n = (end - start + data_cap - 1) / data_cap;
    if (n > count) {
        n = count;
    }
    if (n == 0) {
        PyBuffer_Release(&data);
        return PyLong_FromLong(0);
    }
    if (arg_u64(args[3], &pn, "packet numbers must be 0..2**62-1") < 0 ||
        pn > VARINT_MAX - (uint64_t)n + 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "packet numbers must be 0..2**62-1");
        }
        goto error;
    }

    sid_len = qf_varint_len(sid);
    put_be(sid_bytes, sid | varint_prefix(sid_len), sid_len);
    off_prefix = varint_prefix((int)off_len);
    header_len = 1 + cid_len + pn_len;
    frame_head = 1 + sid_len + off_len + 2;
    max_packet = header_len + frame_head + data_cap + TAG_LEN + 4; /* + possible padding */
    if (header_len + frame_head + data_cap > INT_MAX - TAG_LEN - 4 ||
        n > (PY_SSIZE_T_MAX - PyByteArray_GET_SIZE(bufobj)) / max_packet) {
        PyErr_NoMemory();
        goto error;
    }
    old_len = PyByteArray_GET_SIZE(bufobj);
    if (PyByteArray_Resize(bufobj, old_len + n * max_packet) < 0) {
        goto error;
    }
    out = (unsigned char *)PyByteArray_AS_STRING(bufobj);
    src = (const unsigned char *)data.buf;
    at = old_len;
    pos = start;
    for (i = 0; i < n; i++) {
        Py_ssize_t length = end - pos < data_cap ? end - pos : data_cap;
        Py_ssize_t payload_len = frame_head + length, p = at;
        uint64_t this_pn = pn + (uint64_t)i;
        unsigned char first =
            (unsigned char)(0x40 | (state->key_phase << 2) | (int)(pn_len - 1));

        out[p++] = first;
        memcpy(out + p, PyBytes_AS_STRING(dcid), (size_t)cid_len);
        p += cid_len;
        put_be(out + p, this_pn, (int)pn_len);
        p += pn_len;
        out[p++] = (unsigned char)(0x0E | (fin && pos + length == end));
        memcpy(out + p, sid_bytes, (size_t)sid_len);
        p += sid_len;
        put_be(out + p, off_prefix | (offset + (uint64_t)(pos - start)), (int)off_len);
        p += off_len;
        out[p++] = (unsigned char)(0x40 | (length >> 8));
        out[p++] = (unsigned char)length;
        memcpy(out + p, src + pos, (size_t)length);
        p += length;
        if (pn_len + payload_len < 4) {
            Py_ssize_t pad = 4 - pn_len - payload_len;
            memset(out + p, 0, (size_t)pad);
            p += pad;
            payload_len += pad;
        }
        if (seal_one(state, out, at, (int)header_len, (int)payload_len, this_pn, (int)pn_len,
                     first) < 0) {
            (void)PyByteArray_Resize(bufobj, old_len); /* drop the partial run */
            goto error;
        }
        at = p + TAG_LEN;
        pos += length;
    }
    PyBuffer_Release(&data);
    if (PyByteArray_Resize(bufobj, at) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(n);
error:
    PyBuffer_Release(&data);
    return NULL;
}
