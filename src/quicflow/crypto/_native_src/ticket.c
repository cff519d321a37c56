/*
 * ticket_message(key, nonce, aad, issued_ms, lifetime, age_add, max_early, suite, psk,
 *                alpn, server_name, transport_parameters) -> bytes | None
 *
 * A TLS server's NewSessionTicket message (RFC 8446 4.6.1) in one call: the ticket's
 * plaintext as tls/tickets.encode_ticket writes it (format 1, issued_at in ms, lifetime,
 * age_add, max_early_data, suite, then psk, ALPN and server name with a 1-byte length
 * and the transport parameters with a 2-byte one), sealed with AES-256-GCM under `key`
 * (32 bytes), the 12-byte `nonce` and `aad` (nonce | ciphertext | tag: what
 * TicketSealer.seal_plaintext gives), framed as tls/server.new_session_ticket_bytes
 * does (ticket_nonce 0x00, and QUIC's early_data extension, max_early_data_size
 * 0xffffffff, when max_early is nonzero).
 * None when a field does not fit (a vector too long, a ticket over 65535 bytes, a name
 * that is not UTF-8 encodable): the Python path then raises its error.  The key's AES
 * schedule is kept for the next call with the same key (one entry; the GIL is held).
 *
 * address_token(key, kind, nonce, issued_ms, odcid, retry_scid, aad) -> bytes | None
 *
 * An address validation token as endpoint/tokens.TokenSealer.seal builds it: the kind
 * byte, the 12-byte nonce, then AES-256-GCM under `key` (32 bytes) with `aad` of
 * issued_ms (8 bytes) | len | odcid | len | retry_scid.  None when a field does not fit
 * (a CID over 255 bytes, issued_ms not an unsigned 64-bit value, a kind over 255): the
 * Python path then raises its error.  Its own kept key schedule (one entry), apart from
 * the tickets' one, so the two keys do not take turns re-keying one context.
 */
#include "native.h"

#define TICKET_FORMAT 1
#define TICKET_TAG_LEN 16
#define TICKET_NONCE_LEN 12
#define NST_TYPE 4
#define EXT_EARLY_DATA 42
#define QUIC_MAX_EARLY 0xFFFFFFFFu

/* an AES-256-GCM context keyed for the last key it was given */
struct kept_aead {
    EVP_CIPHER_CTX *ctx;
    unsigned char key[32];
    int keyed;
};

static struct kept_aead ticket_aead, token_aead;

static unsigned char *
put_u16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return p + 2;
}

static unsigned char *
put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
    return p + 4;
}

/* ciphertext and tag of `in` into out (in_len + 16 bytes); 0 or -1 */
static int
kept_seal(struct kept_aead *k, const unsigned char *key, const unsigned char *nonce,
          const unsigned char *aad, int aad_len, const unsigned char *in, int in_len,
          unsigned char *out)
{
    int len = 0, fin = 0;
    if (k->ctx == NULL) {
        k->ctx = EVP_CIPHER_CTX_new();
        if (k->ctx == NULL) {
            return -1;
        }
    }
    if (!k->keyed || memcmp(k->key, key, sizeof(k->key)) != 0) {
        k->keyed = 0;
        if (EVP_EncryptInit_ex(k->ctx, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
            return -1;
        }
        memcpy(k->key, key, sizeof(k->key));
        k->keyed = 1;
    }
    if (EVP_EncryptInit_ex(k->ctx, NULL, NULL, NULL, nonce) != 1 ||
        (aad_len && EVP_EncryptUpdate(k->ctx, NULL, &len, aad, aad_len) != 1) ||
        EVP_EncryptUpdate(k->ctx, out, &len, in, in_len) != 1 ||
        EVP_EncryptFinal_ex(k->ctx, out + len, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(k->ctx, EVP_CTRL_GCM_GET_TAG, TICKET_TAG_LEN,
                            out + len + fin) != 1) {
        k->keyed = 0;
        return -1;
    }
    return 0;
}

PyObject *
mod_ticket_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_buffer key = {0}, nonce = {0}, aad = {0}, psk = {0}, tp = {0};
    const char *alpn, *sni;
    Py_ssize_t alpn_len, sni_len;
    unsigned long long issued_ms;
    unsigned long lifetime, age_add, max_early, suite;
    unsigned char *plain = NULL;
    Py_ssize_t plain_len = 0, ticket_len, ext_len, body_len;
    PyObject *result = NULL;

    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "ticket_message(key, nonce, aad, issued_ms, "
                        "lifetime, age_add, max_early, suite, psk, alpn, server_name, "
                        "transport_parameters)");
        return NULL;
    }
    issued_ms = PyLong_AsUnsignedLongLong(args[3]);
    lifetime = PyLong_AsUnsignedLong(args[4]);
    age_add = PyLong_AsUnsignedLong(args[5]);
    max_early = PyLong_AsUnsignedLong(args[6]);
    suite = PyLong_AsUnsignedLong(args[7]);
    if (PyErr_Occurred()) {
        PyErr_Clear(); /* (a value that does not fit: the Python path's struct.error) */
        Py_RETURN_NONE;
    }
    if (lifetime > 0xFFFFFFFFul || age_add > 0xFFFFFFFFul || max_early > 0xFFFFFFFFul ||
        suite > 0xFFFFul) {
        Py_RETURN_NONE;
    }
    alpn = PyUnicode_Check(args[9]) ? PyUnicode_AsUTF8AndSize(args[9], &alpn_len) : NULL;
    sni = alpn != NULL && PyUnicode_Check(args[10])
              ? PyUnicode_AsUTF8AndSize(args[10], &sni_len) : NULL;
    if (alpn == NULL || sni == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[1], &nonce, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[2], &aad, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[8], &psk, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[11], &tp, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if (key.len != 32 || nonce.len != TICKET_NONCE_LEN || aad.len > 0xFFFF ||
        psk.len > 0xFF || alpn_len > 0xFF || sni_len > 0xFF || tp.len > 0xFFFF) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    plain_len = 1 + 8 + 4 + 4 + 4 + 2 + 1 + psk.len + 1 + alpn_len + 1 + sni_len +
                           2 + tp.len;
    ticket_len = TICKET_NONCE_LEN + plain_len + TICKET_TAG_LEN;
    ext_len = max_early ? 10 : 2;
    if (ticket_len > 0xFFFF) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    plain = PyMem_Malloc((size_t)plain_len);
    if (plain == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    unsigned char *p = plain;
    *p++ = TICKET_FORMAT;
    p = put_u32(p, (uint32_t)(issued_ms >> 32));
    p = put_u32(p, (uint32_t)issued_ms);
    p = put_u32(p, (uint32_t)lifetime);
    p = put_u32(p, (uint32_t)age_add);
    p = put_u32(p, (uint32_t)max_early);
    p = put_u16(p, (unsigned)suite);
    *p++ = (unsigned char)psk.len;
    memcpy(p, psk.buf, (size_t)psk.len);
    p += psk.len;
    *p++ = (unsigned char)alpn_len;
    memcpy(p, alpn, (size_t)alpn_len);
    p += alpn_len;
    *p++ = (unsigned char)sni_len;
    memcpy(p, sni, (size_t)sni_len);
    p += sni_len;
    p = put_u16(p, (unsigned)tp.len);
    memcpy(p, tp.buf, (size_t)tp.len);

    /* the message: type | u24 length, lifetime, age_add, nonce <0x00>, ticket <u16>, ext */
    body_len = 4 + 4 + 2 + 2 + ticket_len + ext_len;
    result = PyBytes_FromStringAndSize(NULL, 4 + body_len);
    if (result == NULL) {
        goto done;
    }
    unsigned char *m = (unsigned char *)PyBytes_AS_STRING(result);
    m = put_u32(m, ((uint32_t)NST_TYPE << 24) | (uint32_t)body_len);
    m = put_u32(m, (uint32_t)lifetime);
    m = put_u32(m, (uint32_t)age_add);
    *m++ = 1;
    *m++ = 0;
    m = put_u16(m, (unsigned)ticket_len);
    memcpy(m, nonce.buf, TICKET_NONCE_LEN);
    if (kept_seal(&ticket_aead, key.buf, nonce.buf, aad.buf, (int)aad.len, plain,
                  (int)plain_len, m + TICKET_NONCE_LEN) < 0) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: ticket sealing failed");
        goto done;
    }
    m += ticket_len;
    if (max_early) {
        m = put_u16(m, 8);
        m = put_u16(m, EXT_EARLY_DATA);
        m = put_u16(m, 4);
        put_u32(m, QUIC_MAX_EARLY); /* (what the Python framing writes for any nonzero) */
    } else {
        put_u16(m, 0);
    }
done:
    if (plain != NULL) {
        OPENSSL_cleanse(plain, (size_t)plain_len);
        PyMem_Free(plain);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&aad);
    PyBuffer_Release(&psk);
    PyBuffer_Release(&tp);
    return result;
}

PyObject *
mod_address_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_buffer key = {0}, nonce = {0}, odcid = {0}, scid = {0}, aad = {0};
    unsigned long kind;
    unsigned long long issued_ms;
    unsigned char plain[8 + 1 + 255 + 1 + 255];
    Py_ssize_t plain_len;
    PyObject *result = NULL;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "address_token(key, kind, nonce, issued_ms, odcid, "
                        "retry_scid, aad)");
        return NULL;
    }
    kind = PyLong_AsUnsignedLong(args[1]);
    issued_ms = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred()) {
        PyErr_Clear(); /* (a value that does not fit: the Python path's error) */
        Py_RETURN_NONE;
    }
    if (kind > 0xFFul) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[2], &nonce, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[4], &odcid, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[5], &scid, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[6], &aad, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if (key.len != 32 || nonce.len != TICKET_NONCE_LEN || odcid.len > 0xFF ||
        scid.len > 0xFF || aad.len > 0xFFFF) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    unsigned char *p = put_u32(plain, (uint32_t)(issued_ms >> 32));
    p = put_u32(p, (uint32_t)issued_ms);
    *p++ = (unsigned char)odcid.len;
    memcpy(p, odcid.buf, (size_t)odcid.len);
    p += odcid.len;
    *p++ = (unsigned char)scid.len;
    memcpy(p, scid.buf, (size_t)scid.len);
    p += scid.len;
    plain_len = p - plain;
    result = PyBytes_FromStringAndSize(NULL, 1 + TICKET_NONCE_LEN + plain_len +
                                       TICKET_TAG_LEN);
    if (result == NULL) {
        goto done;
    }
    unsigned char *m = (unsigned char *)PyBytes_AS_STRING(result);
    m[0] = (unsigned char)kind;
    memcpy(m + 1, nonce.buf, TICKET_NONCE_LEN);
    if (kept_seal(&token_aead, key.buf, nonce.buf, aad.buf, (int)aad.len, plain,
                  (int)plain_len, m + 1 + TICKET_NONCE_LEN) < 0) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: token sealing failed");
    }
done:
    OPENSSL_cleanse(plain, sizeof(plain));
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&odcid);
    PyBuffer_Release(&scid);
    PyBuffer_Release(&aad);
    return result;
}
