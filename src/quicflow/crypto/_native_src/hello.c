/*
 * parse_client_hello(body) -> tuple | None
 *
 * The common case of a TLS 1.3 ClientHello body (RFC 8446 4.1.2, after the 4-byte
 * handshake header) as a QUIC server receives it: every vector well formed, at most 32
 * bytes of legacy_session_id, the compression methods exactly [null], each extension
 * type once, no trailing bytes, and the bodies of the extensions the server reads
 * (supported_versions, signature_algorithms, supported_groups, key_share, ALPN,
 * server_name, psk_key_exchange_modes) well formed.  Returns
 *
 *   (random, session_id, cipher_suites, extensions, ext_map, offers)
 *
 * the fields tls/messages.decode_client_hello gives for the same bytes (extensions: the
 * (type, body) list in order, ext_map: type -> body), and offers: (supported versions,
 * signature algorithms, groups, key shares [(group, key)], ALPN names (latin-1),
 * server name (the first host_name, ASCII) or None, psk modes), each None when its
 * extension is absent -- what the messages.parse_* functions return for those bodies.
 * Anything else (any error those Python parsers would raise, a non-ASCII host name, more
 * than MAX_EXTENSIONS extensions) gives None and the Python parser, the reference, runs:
 * it decodes the rare case or raises each error with its alert, so the result never
 * depends on which parser ran (tests/test_client_hello_native.py).
 */
#include "native.h"

#define MAX_EXTENSIONS 64

enum { EXT_SERVER_NAME = 0, EXT_GROUPS = 10, EXT_SIG_ALGS = 13, EXT_ALPN = 16,
       EXT_VERSIONS = 43, EXT_PSK_MODES = 45, EXT_KEY_SHARE = 51 };

/* indexes into offers */
enum { OF_VERSIONS, OF_SIG_ALGS, OF_GROUPS, OF_SHARES, OF_ALPN, OF_SNI, OF_PSK_MODES,
       OF_COUNT };

static inline unsigned
u16_at(const uint8_t *b)
{
    return ((unsigned)b[0] << 8) | b[1];
}

/* A list of the n/2 big-endian u16 values at b (n even). */
static PyObject *
u16_list(const uint8_t *b, Py_ssize_t n)
{
    PyObject *out = PyList_New(n / 2);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n / 2; i++) {
        PyObject *v = PyLong_FromLong((long)u16_at(b + 2 * i));
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

/* A u16 list with a len_bytes (1 or 2) length filling b[0:n] exactly; Py_None (a new
 * reference) when malformed, NULL on a Python error. */
static PyObject *
exact_u16_list(const uint8_t *b, Py_ssize_t n, int len_bytes)
{
    if (n < len_bytes) {
        Py_RETURN_NONE;
    }
    Py_ssize_t len = len_bytes == 1 ? b[0] : (Py_ssize_t)u16_at(b);
    if (len == 0 || len & 1 || len_bytes + len != n) { /* (empty: Python's decode_error) */
        Py_RETURN_NONE;
    }
    return u16_list(b + len_bytes, len);
}

/* key_share (client): a u16 vector of (u16 group, u16-length key) filling b[0:n]. */
static PyObject *
key_shares(const uint8_t *b, Py_ssize_t n)
{
    if (n < 2 || 2 + (Py_ssize_t)u16_at(b) != n) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 2;
    while (pos < n) {
        if (pos + 4 > n || pos + 4 + (Py_ssize_t)u16_at(b + pos + 2) > n) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        Py_ssize_t len = u16_at(b + pos + 2);
        if (len == 0) { /* key_exchange<1..2^16-1>: Python's decode_error */
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyObject *entry = Py_BuildValue("(ly#)", (long)u16_at(b + pos), b + pos + 4, len);
        if (entry == NULL || PyList_Append(out, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(entry);
        pos += 4 + len;
    }
    return out;
}

/* ALPN: a u16 vector of non-empty u8-length names (latin-1), at least one. */
static PyObject *
alpn_names(const uint8_t *b, Py_ssize_t n)
{
    if (n < 3 || 2 + (Py_ssize_t)u16_at(b) != n) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 2;
    while (pos < n) {
        Py_ssize_t len = b[pos];
        if (len == 0 || pos + 1 + len > n) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyObject *name = PyUnicode_DecodeLatin1((const char *)b + pos + 1, len, NULL);
        if (name == NULL || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(name);
        pos += 1 + len;
    }
    return out;
}

/* server_name (RFC 6066 3): the first host_name (type 0) as ASCII, or Py_None when there
 * is none; *ok = 0 when the list is malformed or that name is not ASCII. */
static PyObject *
server_name(const uint8_t *b, Py_ssize_t n, int *ok)
{
    *ok = 0;
    if (n < 2 || 2 + (Py_ssize_t)u16_at(b) != n) {
        Py_RETURN_NONE;
    }
    const uint8_t *host = NULL;
    Py_ssize_t host_len = 0;
    Py_ssize_t pos = 2;
    while (pos < n) {
        if (pos + 3 > n || pos + 3 + (Py_ssize_t)u16_at(b + pos + 1) > n) {
            Py_RETURN_NONE;
        }
        Py_ssize_t len = u16_at(b + pos + 1);
        if (b[pos] == 0 && host == NULL) {
            host = b + pos + 3;
            host_len = len;
        }
        pos += 3 + len;
    }
    if (host == NULL) {
        *ok = 1;
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < host_len; i++) {
        if (host[i] & 0x80) {
            Py_RETURN_NONE;
        }
    }
    *ok = 1;
    return PyUnicode_DecodeASCII((const char *)host, host_len, NULL);
}

/* psk_key_exchange_modes: a non-empty u8 list filling b[0:n]. */
static PyObject *
psk_modes(const uint8_t *b, Py_ssize_t n)
{
    if (n < 2 || 1 + (Py_ssize_t)b[0] != n) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n - 1);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        PyList_SET_ITEM(out, i - 1, PyLong_FromLong(b[i]));  /* small ints: cached */
    }
    return out;
}

/* offers[slot] from one extension body: 1 set, 0 malformed (not here), -1 error. */
static int
offer(PyObject *offers, unsigned type, const uint8_t *b, Py_ssize_t n)
{
    PyObject *value;
    int slot, ok = 1;
    switch (type) {
    case EXT_VERSIONS: slot = OF_VERSIONS; value = exact_u16_list(b, n, 1); break;
    case EXT_SIG_ALGS: slot = OF_SIG_ALGS; value = exact_u16_list(b, n, 2); break;
    case EXT_GROUPS: slot = OF_GROUPS; value = exact_u16_list(b, n, 2); break;
    case EXT_KEY_SHARE: slot = OF_SHARES; value = key_shares(b, n); break;
    case EXT_ALPN: slot = OF_ALPN; value = alpn_names(b, n); break;
    case EXT_PSK_MODES: slot = OF_PSK_MODES; value = psk_modes(b, n); break;
    case EXT_SERVER_NAME: slot = OF_SNI; value = server_name(b, n, &ok); break;
    default: return 1;
    }
    if (value == NULL) {
        return -1;  /* (memory: a name that is not ASCII was refused above) */
    }
    if (slot != OF_SNI && value == Py_None) {
        ok = 0;
    }
    if (!ok) {
        Py_DECREF(value);
        return 0;
    }
    PyObject *old = PyTuple_GET_ITEM(offers, slot);
    PyTuple_SET_ITEM(offers, slot, value);
    Py_DECREF(old);
    return 1;
}

PyObject *
mod_parse_client_hello(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "parse_client_hello(body)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t end = view.len;
    PyObject *suites = NULL, *exts = NULL, *ext_map = NULL, *offers = NULL, *result = NULL;
    unsigned types[MAX_EXTENSIONS];
    int n_ext = 0;

    /* legacy_version(2) random(32) session_id<0..32> */
    if (end < 35) {
        goto done;
    }
    Py_ssize_t sid_len = b[34];
    Py_ssize_t pos = 35 + sid_len;
    if (sid_len > 32 || pos > end) {
        goto done;
    }
    /* cipher_suites<2..2^16-2>: a u16 list (empty: the Python parser's decode_error) */
    if (pos + 2 > end) {
        goto done;
    }
    Py_ssize_t n = u16_at(b + pos);
    if (n == 0 || n & 1 || pos + 2 + n > end) {
        goto done;
    }
    suites = u16_list(b + pos + 2, n);
    if (suites == NULL) {
        goto error;
    }
    pos += 2 + n;
    /* legacy_compression_methods: exactly [null] */
    if (pos + 2 > end || b[pos] != 1 || b[pos + 1] != 0) {
        goto done;
    }
    pos += 2;
    /* extensions: a u16 vector filling the rest of the body */
    if (pos + 2 > end || pos + 2 + (Py_ssize_t)u16_at(b + pos) != end) {
        goto done;
    }
    pos += 2;
    exts = PyList_New(0);
    ext_map = PyDict_New();
    offers = PyTuple_New(OF_COUNT);
    if (exts == NULL || ext_map == NULL || offers == NULL) {
        goto error;
    }
    for (int i = 0; i < OF_COUNT; i++) {
        PyTuple_SET_ITEM(offers, i, Py_NewRef(Py_None));
    }
    while (pos < end) {
        if (pos + 4 > end || n_ext == MAX_EXTENSIONS) {
            goto done;
        }
        unsigned type = u16_at(b + pos);
        Py_ssize_t len = u16_at(b + pos + 2);
        pos += 4;
        if (pos + len > end) {
            goto done;
        }
        for (int i = 0; i < n_ext; i++) {
            if (types[i] == type) {
                goto done;  /* a duplicate: the Python parser's illegal_parameter */
            }
        }
        types[n_ext++] = type;
        int rc = offer(offers, type, b + pos, len);
        if (rc < 0) {
            goto error;
        }
        if (rc == 0) {
            goto done;
        }
        PyObject *body = PyBytes_FromStringAndSize((const char *)b + pos, len);
        if (body == NULL) {
            goto error;
        }
        PyObject *key = PyLong_FromLong((long)type);
        PyObject *entry = key == NULL ? NULL : PyTuple_Pack(2, key, body);
        int bad = entry == NULL || PyList_Append(exts, entry) < 0 ||
                  PyDict_SetItem(ext_map, key, body) < 0;
        Py_XDECREF(entry);
        Py_XDECREF(key);
        Py_DECREF(body);
        if (bad) {
            goto error;
        }
        pos += len;
    }
    result = Py_BuildValue("(y#y#OOOO)", b + 2, (Py_ssize_t)32, b + 35, sid_len, suites,
                           exts, ext_map, offers);
    goto cleanup;
done:
    result = Py_NewRef(Py_None);
    goto cleanup;
error:
    result = NULL;
cleanup:
    Py_XDECREF(suites);
    Py_XDECREF(exts);
    Py_XDECREF(ext_map);
    Py_XDECREF(offers);
    PyBuffer_Release(&view);
    return result;
}
