/*
 * parse_header(data, pos, short_dcid_len, header_type) -> header | None
 *
 * The common packet headers of a received datagram, parsed as wire/packet.parse_header
 * does (RFC 9000 17): a short header, or a long header of QUIC v1 or v2 (RFC 9369) of
 * type Initial, 0-RTT or Handshake.  Returns
 *   header_type(packet_type, version, dcid, scid, token, pn_offset, end, first_byte)
 * with the same values, or None for anything else: Version Negotiation, Retry, another
 * version, and every malformed header.  The caller then runs parse_header, the reference,
 * which returns those headers or raises WireError with its message; so the result (or
 * the error) never depends on which parser ran.  Nothing here is header-protected.
 *
 * header_type is wire.packet.PacketHeader: a slotted dataclass of ten fields, the last
 * two with defaults (supported_versions: a new empty list; integrity_tag: b"").  It is
 * built without its __init__ (objects.c) with those two defaults; a class not of that
 * kind (other than ten plain slots) is called with the eight values.
 */
#include "native.h"

#define QUIC_V1 0x00000001u
#define QUIC_V2 0x6B3343CFu
#define MAX_CID_LEN 20
/* wire/packet.py's packet types */
#define T_INITIAL 0
#define T_ZERO_RTT 1
#define T_HANDSHAKE 2
#define T_RETRY 3
#define T_ONE_RTT 4

static const int TYPE_OF_BITS_V1[4] = {T_INITIAL, T_ZERO_RTT, T_HANDSHAKE, T_RETRY};
static const int TYPE_OF_BITS_V2[4] = {T_RETRY, T_INITIAL, T_ZERO_RTT, T_HANDSHAKE};

/* header_type's layout (objects.c), worked out once per class (held) */
static PyObject *layout_of = NULL;
static QfLayout layout;

static PyObject *
make_header(PyObject *header_type, int ptype, uint32_t version, const uint8_t *b,
            Py_ssize_t dcid_at, Py_ssize_t dcid_len, Py_ssize_t scid_at, Py_ssize_t scid_len,
            Py_ssize_t token_at, Py_ssize_t token_len, Py_ssize_t pn_offset, Py_ssize_t end,
            int first)
{
    PyObject *args[10] = {NULL};
    Py_ssize_t n = 8;
    if (header_type != layout_of) {
        Py_CLEAR(layout_of);
        if (qf_layout_for(header_type, &layout) < 0) {
            return NULL;
        }
        layout_of = Py_NewRef(header_type);
    }
    args[0] = PyLong_FromLong(ptype);
    args[1] = PyLong_FromUnsignedLong(version);
    args[2] = PyBytes_FromStringAndSize((const char *)b + dcid_at, dcid_len);
    args[3] = PyBytes_FromStringAndSize((const char *)b + scid_at, scid_len);
    args[4] = PyBytes_FromStringAndSize((const char *)b + token_at, token_len);
    args[5] = PyLong_FromSsize_t(pn_offset);
    args[6] = PyLong_FromSsize_t(end);
    args[7] = PyLong_FromLong(first);
    if (layout.nfields == 10) {
        /* built directly: the two defaults the generated __init__ would set,
           supported_versions (a new list) and integrity_tag (b"") */
        args[8] = PyList_New(0);
        args[9] = PyBytes_FromStringAndSize(NULL, 0);
        n = 10;
    }
    return qf_build(header_type, n == 10 ? &layout : &(QfLayout){.nfields = -1}, args, n);
}

PyObject *
mod_parse_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "parse_header(data, pos, short_dcid_len, header_type)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t short_len = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || short_len == -1) && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len;
    PyObject *result = NULL;
    if (pos < 0 || pos >= n || short_len < 0) {
        goto not_here;
    }
    int first = b[pos];
    if (!(first & 0x80)) { /* short header (1-RTT) */
        Py_ssize_t pn_offset = pos + 1 + short_len;
        if (!(first & 0x40) || pn_offset >= n) {
            goto not_here;
        }
        result = make_header(args[3], T_ONE_RTT, QUIC_V1, b, pos + 1, short_len, 0, 0, 0, 0,
                             pn_offset, n, first);
        PyBuffer_Release(&view);
        return result;
    }
    if (pos + 7 > n) {
        goto not_here;
    }
    uint32_t version = ((uint32_t)b[pos + 1] << 24) | ((uint32_t)b[pos + 2] << 16) |
                       ((uint32_t)b[pos + 3] << 8) | b[pos + 4];
    Py_ssize_t dcid_len = b[pos + 5];
    Py_ssize_t p = pos + 6;
    if (p + dcid_len >= n) {
        goto not_here;
    }
    Py_ssize_t dcid_at = p;
    p += dcid_len;
    Py_ssize_t scid_len = b[p];
    p += 1;
    if (p + scid_len > n) {
        goto not_here;
    }
    Py_ssize_t scid_at = p;
    p += scid_len;
    if (!(first & 0x40) || (version != QUIC_V1 && version != QUIC_V2) ||
        dcid_len > MAX_CID_LEN || scid_len > MAX_CID_LEN) {
        goto not_here; /* (version 0, Version Negotiation: not QUIC v1 or v2 either) */
    }
    int bits = (first >> 4) & 3;
    int ptype = version == QUIC_V1 ? TYPE_OF_BITS_V1[bits] : TYPE_OF_BITS_V2[bits];
    if (ptype == T_RETRY) {
        goto not_here;
    }
    Py_ssize_t token_at = p, token_len = 0;
    if (ptype == T_INITIAL) {
        uint64_t tl;
        if (qf_varint(b, n, &p, &tl) < 0 || tl > (uint64_t)(n - p)) {
            goto not_here;
        }
        token_at = p;
        token_len = (Py_ssize_t)tl;
        p += token_len;
    }
    uint64_t length;
    if (qf_varint(b, n, &p, &length) < 0 || length == 0 || length > (uint64_t)(n - p)) {
        goto not_here;
    }
    result = make_header(args[3], ptype, version, b, dcid_at, dcid_len, scid_at, scid_len,
                         token_at, token_len, p, p + (Py_ssize_t)length, first);
    PyBuffer_Release(&view);
    return result;
not_here:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* push_short_packet(buf, dcid, pn, pn_len, payload) -> int | None: appends to the
 * bytearray buf a plaintext 1-RTT packet as the send path lays it out for the engine's
 * seal -- wire.packet.build_short_header(dcid, pn, pn_len, 0) (spin and key phase 0:
 * the engine sets the phase), the payload, then TAG_LEN zero bytes for the tag -- and
 * returns the header's length (wire.packet.push_short_packet). None, buf unchanged, for
 * what the reference decides: a pn length other than 1..4, a pn that is not a 62-bit
 * number, non-bytearray buf, payload being buf, arguments without a buffer. */
PyObject *
mod_push_short_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer dcid = {0}, payload = {0};
    PyObject *buf, *result = NULL;
    unsigned long long pn;
    long pn_len;
    Py_ssize_t old, hlen, i;
    unsigned char *p;
    (void)module;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "push_short_packet(buf, dcid, pn, pn_len, payload)");
        return NULL;
    }
    buf = args[0];
    if (!PyByteArray_CheckExact(buf) || !PyLong_CheckExact(args[2]) ||
        !PyLong_CheckExact(args[3]) || args[4] == buf || args[1] == buf) {
        Py_RETURN_NONE;
    }
    pn = PyLong_AsUnsignedLongLong(args[2]);
    pn_len = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (pn_len < 1 || pn_len > 4 || pn >= ((unsigned long long)1 << 62)) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[1], &dcid, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[4], &payload, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    hlen = 1 + dcid.len + pn_len;
    old = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, old + hlen + payload.len + TAG_LEN) < 0) {
        goto done;
    }
    p = (unsigned char *)PyByteArray_AS_STRING(buf) + old;
    p[0] = (unsigned char)(0x40 | (pn_len - 1));
    memcpy(p + 1, dcid.buf, (size_t)dcid.len);
    p += 1 + dcid.len;
    for (i = 0; i < pn_len; i++) {
        p[i] = (unsigned char)(pn >> (8 * (pn_len - 1 - i)));
    }
    p += pn_len;
    memcpy(p, payload.buf, (size_t)payload.len);
    memset(p + payload.len, 0, TAG_LEN);
    result = PyLong_FromSsize_t(hlen);
done:
    if (dcid.obj) PyBuffer_Release(&dcid);
    if (payload.obj) PyBuffer_Release(&payload);
    return result;
}
