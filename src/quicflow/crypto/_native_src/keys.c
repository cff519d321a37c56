/*
 * quicflow.crypto._native -- keys: cipher suites, OpenSSL error reporting,
 * HKDF-Expand-Label, the KeyContext type (the keys of one key-phase generation) and the
 * process's shared EVP contexts it keys on use (kc_rekey).
 * The per-packet KeyContext primitives (kc_mask, kc_seal, kc_open) are static inline
 * in native.h.
 */
#include "native.h"

/* ---------------------------------------------------------------------------------- */
/* suites, errors, HKDF                                                               */

int
suite_info(long suite, SuiteInfo *info)
{
    switch (suite) {
    case SUITE_AES128:
        *info = (SuiteInfo){16, 32, 0, EVP_aes_128_gcm, EVP_aes_128_ecb, EVP_sha256};
        return 0;
    case SUITE_AES256:
        *info = (SuiteInfo){32, 48, 0, EVP_aes_256_gcm, EVP_aes_256_ecb, EVP_sha384};
        return 0;
    case SUITE_CHACHA:
        *info = (SuiteInfo){32, 32, 1, EVP_chacha20_poly1305, EVP_chacha20, EVP_sha256};
        return 0;
    default:
        PyErr_Format(PyExc_ValueError, "unsupported cipher suite 0x%lx", suite);
        return -1;
    }
}

PyObject *
openssl_error(const char *what)
{
    unsigned long code = ERR_get_error();
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    ERR_clear_error();
    PyErr_Format(PyExc_RuntimeError, "OpenSSL: %s failed (%s)", what, text);
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* KeyContext                                                                         */

CtxPool kc_pools[KC_SUITES][KC_ROLES];

static void
kc_dealloc(KeyContext *self)
{
    int which;
    for (which = 0; which < KC_ROLES; which++) {
        int i = self->slot[which];
        if (i >= 0) { /* the entry goes back; its context is re-keyed by the next taker */
            CtxPool *pool = &kc_pools[self->suite_index][which];
            pool->entries[i].owner = NULL;
            pool->free[pool->free_count++] = i;
        }
    }
    OPENSSL_cleanse(self->key, sizeof(self->key));
    OPENSSL_cleanse(self->hp_raw, sizeof(self->hp_raw));
    OPENSSL_cleanse(self->iv, sizeof(self->iv));
    Py_XDECREF(self->hp_key);
    Py_XDECREF(self->secret);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* New reference; key/iv/hp_key lengths must already be checked. */
KeyContext *
kc_create(long suite, const unsigned char *key, const unsigned char *iv, PyObject *hp_key,
          PyObject *secret)
{
    SuiteInfo info;
    KeyContext *self;
    const unsigned char *hp = (const unsigned char *)PyBytes_AS_STRING(hp_key);

    if (suite_info(suite, &info) < 0) {
        return NULL;
    }
    self = PyObject_New(KeyContext, &KeyContextType);
    if (self == NULL) {
        return NULL;
    }
    self->suite = suite;
    self->chacha = info.chacha;
    self->key_len = info.key_len;
    self->suite_index = suite == SUITE_AES128 ? 0 : suite == SUITE_AES256 ? 1 : 2;
    self->slot[0] = self->slot[1] = self->slot[2] = self->slot[3] = -1;
    memcpy(self->iv, iv, IV_LEN);
    Py_INCREF(hp_key);
    self->hp_key = hp_key;
    Py_INCREF(secret);
    self->secret = secret;
    memcpy(self->key, key, (size_t)info.key_len);
    memcpy(self->hp_raw, hp, (size_t)info.key_len);
    return self;
}

EVP_CIPHER_CTX *
kc_acquire(KeyContext *kc, int which)
{
    static const unsigned char zero16[16] = {0};
    CtxPool *pool = &kc_pools[kc->suite_index][which];
    const unsigned char *key = which == KC_ENC || which == KC_DEC ? kc->key : kc->hp_raw;
    const unsigned char *iv = which >= KC_HP && kc->chacha ? zero16 : NULL;
    const EVP_CIPHER *cipher = NULL;
    PoolEntry *entry;
    int i, ok;

    if (pool->free_count > 0) {
        i = pool->free[--pool->free_count];
    } else if (pool->used < KC_POOL) {
        i = pool->used;
    } else { /* full: hand over the entry taken longest ago */
        i = pool->hand;
        pool->hand = (pool->hand + 1) % KC_POOL;
        pool->entries[i].owner->slot[which] = -1;
        pool->entries[i].owner = NULL;
    }
    entry = &pool->entries[i];
    if (entry->ctx == NULL) { /* a new entry: the cipher, then the key */
        switch (kc->suite) {
        case SUITE_AES128:
            cipher = which >= KC_HP ? EVP_aes_128_ecb() : EVP_aes_128_gcm();
            break;
        case SUITE_AES256:
            cipher = which >= KC_HP ? EVP_aes_256_ecb() : EVP_aes_256_gcm();
            break;
        default:
            cipher = which >= KC_HP ? EVP_chacha20() : EVP_chacha20_poly1305();
            break;
        }
        entry->ctx = EVP_CIPHER_CTX_new();
        if (entry->ctx == NULL) {
            return NULL;
        }
        if (i == pool->used) {
            pool->used++;
        }
    }
    if (which == KC_DEC) {
        ok = EVP_DecryptInit_ex(entry->ctx, cipher, NULL, key, NULL) == 1;
    } else {
        ok = EVP_EncryptInit_ex(entry->ctx, cipher, NULL, key, iv) == 1;
    }
    if (ok && cipher != NULL && which >= KC_HP && !kc->chacha) {
        ok = EVP_CIPHER_CTX_set_padding(entry->ctx, 0) == 1;
    }
    if (!ok) { /* the entry stays free; a never-keyed context is built again next time */
        if (cipher != NULL) {
            EVP_CIPHER_CTX_free(entry->ctx);
            entry->ctx = NULL;
        }
        if (i < pool->used) {
            pool->free[pool->free_count++] = i;
        }
        return NULL;
    }
    entry->owner = kc;
    kc->slot[which] = i;
    return entry->ctx;
}

/* The AES-GCM nonce as a parameter (kc_aead_nonce): on once kc_gcm_params_probe found it
 * exact on this OpenSSL (module init). */
int kc_gcm_params = 0;

/* Seal 40 bytes under two nonces in turn on one context (the second re-uses the context
 * as the packet loop does) by the init path and by the parameter path: same bytes and
 * tags? Then open by the parameter path: the right tag opens, a wrong one fails and the
 * next right one opens again. */
int
kc_gcm_params_probe(void)
{
    static const unsigned char key[16] = {0x1f, 0x36, 0x96, 0x13, 0xdd, 0x76, 0xd5, 0x46,
                                          0x77, 0x30, 0xef, 0xcb, 0xe3, 0xb1, 0xa2, 0x2d};
    static const unsigned char aad[21] = "probe: header bytes!";
    unsigned char nonce[IV_LEN], want[2][56], got[2][56], plain[40], bad[TAG_LEN];
    EVP_CIPHER_CTX *a = EVP_CIPHER_CTX_new(), *b = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX *d = EVP_CIPHER_CTX_new();
    int ok = a != NULL && b != NULL && d != NULL, saved = kc_gcm_params, r, outl;

    kc_gcm_params = 1;
    ok = ok && EVP_EncryptInit_ex(a, EVP_aes_128_gcm(), NULL, key, NULL) == 1 &&
         EVP_EncryptInit_ex(b, EVP_aes_128_gcm(), NULL, key, NULL) == 1 &&
         EVP_DecryptInit_ex(d, EVP_aes_128_gcm(), NULL, key, NULL) == 1;
    for (r = 0; ok && r < 2; r++) {
        memset(nonce, 0xa5 ^ r, IV_LEN);
        memset(plain, 0x3c + r, sizeof(plain));
        memcpy(want[r], plain, sizeof(plain));
        memcpy(got[r], plain, sizeof(plain));
        ok = kc_aead_nonce(a, 0, 1, nonce, NULL) == 0 &&
             EVP_EncryptUpdate(a, NULL, &outl, aad, (int)sizeof(aad)) == 1 &&
             EVP_EncryptUpdate(a, want[r], &outl, want[r], 40) == 1 &&
             EVP_EncryptFinal_ex(a, want[r] + 40, &outl) == 1 &&
             kc_aead_tag(a, want[r] + 40) == 0 && kc_aead_nonce(b, 1, 1, nonce, NULL) == 0 &&
             EVP_EncryptUpdate(b, NULL, &outl, aad, (int)sizeof(aad)) == 1 &&
             EVP_EncryptUpdate(b, got[r], &outl, got[r], 40) == 1 &&
             EVP_EncryptFinal_ex(b, got[r] + 40, &outl) == 1 &&
             kc_aead_tag(b, got[r] + 40) == 0 && memcmp(want[r], got[r], 56) == 0;
    }
    /* open: the second packet, a wrong tag (fails), the first, the second again */
    for (r = 0; ok && r < 4; r++) {
        int which = r == 2 ? 0 : 1, opened;
        const unsigned char *tag = want[which] + 40;
        if (r == 1) {
            memcpy(bad, tag, TAG_LEN);
            bad[5] ^= 0x10;
            tag = bad;
        }
        memset(nonce, 0xa5 ^ which, IV_LEN);
        opened = kc_aead_nonce(d, 1, 0, nonce, tag) == 0 &&
                 EVP_DecryptUpdate(d, NULL, &outl, aad, (int)sizeof(aad)) == 1 &&
                 EVP_DecryptUpdate(d, got[which], &outl, want[which], 40) == 1 &&
                 EVP_DecryptFinal_ex(d, got[which] + 40, &outl) == 1;
        memset(plain, 0x3c + which, sizeof(plain));
        ok = r == 1 ? !opened : opened && memcmp(got[which], plain, 40) == 0;
    }
    ERR_clear_error();
    EVP_CIPHER_CTX_free(a);
    EVP_CIPHER_CTX_free(b);
    EVP_CIPHER_CTX_free(d);
    kc_gcm_params = saved;
    return ok;
}

int
check_len(Py_buffer *view, Py_ssize_t want, const char *what)
{
    if (view->len != want) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes", what, want);
        return -1;
    }
    return 0;
}

static PyObject *
kc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"suite", "key", "iv", "hp_key", "secret", NULL};
    long suite;
    Py_buffer key = {0}, iv = {0}, hp = {0};
    PyObject *secret = Py_None, *hp_bytes = NULL, *secret_bytes = NULL;
    KeyContext *result = NULL;
    SuiteInfo info;

    (void)type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ly*y*y*|O:KeyContext", kwlist, &suite, &key,
                                     &iv, &hp, &secret)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0 || check_len(&key, info.key_len, "packet key") < 0 ||
        check_len(&iv, IV_LEN, "iv") < 0 ||
        check_len(&hp, info.key_len, "header protection key") < 0) {
        goto done;
    }
    if (secret == Py_None) {
        secret_bytes = Py_NewRef(Py_None);
    } else {
        secret_bytes = PyBytes_FromObject(secret);
        if (secret_bytes == NULL) {
            goto done;
        }
        if (PyBytes_GET_SIZE(secret_bytes) != info.hash_len) {
            PyErr_Format(PyExc_ValueError, "secret must be %d bytes", info.hash_len);
            goto done;
        }
    }
    hp_bytes = PyBytes_FromStringAndSize(hp.buf, hp.len);
    if (hp_bytes == NULL) {
        goto done;
    }
    result = kc_create(suite, key.buf, iv.buf, hp_bytes, secret_bytes);
done:
    Py_XDECREF(hp_bytes);
    Py_XDECREF(secret_bytes);
    if (key.obj) PyBuffer_Release(&key);
    if (iv.obj) PyBuffer_Release(&iv);
    if (hp.obj) PyBuffer_Release(&hp);
    return (PyObject *)result;
}

static PyObject *
kc_get_secret(KeyContext *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->secret);
}

static PyObject *
kc_get_hp_key(KeyContext *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->hp_key);
}

static PyObject *
kc_get_suite(KeyContext *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->suite);
}

static PyObject *
kc_get_iv(KeyContext *self, void *closure)
{
    (void)closure;
    return PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "y#s",
                               (const char *)self->iv, (Py_ssize_t)IV_LEN, "big");
}

static PyObject *
kc_mask_py(KeyContext *self, PyObject *arg)
{
    Py_buffer sample;
    unsigned char mask[5];
    if (PyObject_GetBuffer(arg, &sample, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (check_len(&sample, SAMPLE_LEN, "header protection sample") < 0) {
        PyBuffer_Release(&sample);
        return NULL;
    }
    if (kc_mask(self, KC_HP, sample.buf, mask) < 0) {
        PyBuffer_Release(&sample);
        return openssl_error("header protection mask");
    }
    PyBuffer_Release(&sample);
    return PyBytes_FromStringAndSize((const char *)mask, 5);
}

static PyGetSetDef kc_getset[] = {
    {"suite", (getter)kc_get_suite, NULL, "cipher suite code point", NULL},
    {"secret", (getter)kc_get_secret, NULL, "traffic secret of this generation (or None)",
     NULL},
    {"hp_key", (getter)kc_get_hp_key, NULL, "header protection key", NULL},
    {"iv", (getter)kc_get_iv, NULL, "AEAD IV as a big-endian int", NULL},
    {NULL},
};

/* seal_packet(header, payload, pn) -> bytes: the whole long-header packet, as
 * keys.PacketProtector.seal builds it (AEAD with the header as AAD, then header
 * protection with the first byte's pn length); ValueError when it cannot be sampled. */
static PyObject *
kc_seal_packet_py(KeyContext *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer header = {0}, payload = {0};
    unsigned long long pn;
    PyObject *out = NULL;
    unsigned char *p;
    Py_ssize_t total, pn_offset, sample_at;
    int pn_len;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "seal_packet(header, payload, pn)");
        return NULL;
    }
    pn = PyLong_AsUnsignedLongLong(args[2]);
    if (pn == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &header, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if (header.len < 1) {
        PyErr_SetString(PyExc_ValueError, "empty packet header");
        goto done;
    }
    pn_len = (((const unsigned char *)header.buf)[0] & 3) + 1;
    pn_offset = header.len - pn_len;
    sample_at = pn_offset + 4;
    total = header.len + payload.len + TAG_LEN;
    if (pn_offset < 1 || total < sample_at + SAMPLE_LEN) {
        PyErr_SetString(PyExc_ValueError,
                        "packet too short for header protection sample; pad the payload");
        goto done;
    }
    if (header.len > INT_MAX || payload.len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "packet too long");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        goto done;
    }
    p = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(p, header.buf, (size_t)header.len);
    memcpy(p + header.len, payload.buf, (size_t)payload.len);
    if (kc_seal_protect(self, pn, p, (int)header.len, (int)payload.len, pn_offset,
                        pn_len) < 0) {
        Py_CLEAR(out);
        openssl_error("packet seal");
        goto done;
    }
done:
    if (header.obj) PyBuffer_Release(&header);
    if (payload.obj) PyBuffer_Release(&payload);
    return out;
}

/* seal_long(buf, packet_type, version, dcid, scid, token, payload, pn, pn_len) -> int:
 * appends to the bytearray buf the sealed packet that
 *   buf += seal_packet(wire.packet.build_long_header(packet_type, version, dcid, scid,
 *                      token, pn_len + len(payload) + 16, pn, pn_len), payload, pn)
 * appends (the header written in place, the payload copied after it, AEAD with the header
 * as AAD, then header protection) and returns its size; one call per built Initial,
 * 0-RTT or Handshake packet. None, with buf unchanged, for anything else (a packet type
 * or pn length build_long_header refuses, a CID over 20 bytes, a Length that does not
 * fit two bytes, a token of 2**30 bytes or more, a pn that is not a 62-bit number, a
 * packet too short to be sampled, payload being buf): the Python reference then builds
 * it or raises its error. Packet types are wire/packet.py's (0 Initial, 1 0-RTT, 2
 * Handshake); the first byte's type bits are QUIC v2's (RFC 9369) for that version and
 * v1's for any other, as build_long_header writes them. */
#define SL_QUIC_V2 0x6B3343CFul
static const unsigned char SL_BITS_V1[3] = {0, 1, 2};
static const unsigned char SL_BITS_V2[3] = {1, 2, 3};

static PyObject *
kc_seal_long_py(KeyContext *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer dcid = {0}, scid = {0}, token = {0}, payload = {0};
    PyObject *buf, *result = NULL;
    long ptype, pn_len;
    unsigned long version;
    unsigned long long pn;
    Py_ssize_t old, hlen, total, tok_len, tok_vlen, length, pos, pn_offset, i;
    unsigned char *p, first;

    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_long(buf, packet_type, version, dcid, scid, token, payload, "
                        "pn, pn_len)");
        return NULL;
    }
    buf = args[0];
    if (!PyByteArray_CheckExact(buf) || !PyLong_CheckExact(args[1]) ||
        !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[7]) ||
        !PyLong_CheckExact(args[8]) || args[6] == buf) {
        Py_RETURN_NONE;
    }
    ptype = PyLong_AsLong(args[1]);
    pn_len = PyLong_AsLong(args[8]);
    version = PyLong_AsUnsignedLong(args[2]);
    pn = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred()) { /* out of range: the reference decides */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (ptype < 0 || ptype > 2 || pn_len < 1 || pn_len > 4 || version > 0xFFFFFFFFul ||
        pn >= ((unsigned long long)1 << 62)) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[3], &dcid, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[4], &scid, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[5], &token, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[6], &payload, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    tok_len = ptype == 0 ? token.len : 0;
    tok_vlen = ptype != 0 ? 0 : tok_len < 0x40 ? 1 : tok_len < 0x4000 ? 2 : 4;
    length = pn_len + payload.len + TAG_LEN;
    hlen = 7 + dcid.len + scid.len + tok_vlen + tok_len + 2 + pn_len;
    total = hlen + payload.len + TAG_LEN;
    pn_offset = hlen - pn_len;
    if (dcid.len > 20 || scid.len > 20 || tok_len >= ((Py_ssize_t)1 << 30) ||
        length >= 0x4000 || total < pn_offset + 4 + SAMPLE_LEN) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    old = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, old + total) < 0) {
        goto done;
    }
    p = (unsigned char *)PyByteArray_AS_STRING(buf) + old;
    first = (unsigned char)(0xC0 | (version == SL_QUIC_V2 ? SL_BITS_V2 : SL_BITS_V1)[ptype] << 4 |
                            (pn_len - 1));
    p[0] = first;
    p[1] = (unsigned char)(version >> 24);
    p[2] = (unsigned char)(version >> 16);
    p[3] = (unsigned char)(version >> 8);
    p[4] = (unsigned char)version;
    p[5] = (unsigned char)dcid.len;
    memcpy(p + 6, dcid.buf, (size_t)dcid.len);
    pos = 6 + dcid.len;
    p[pos++] = (unsigned char)scid.len;
    memcpy(p + pos, scid.buf, (size_t)scid.len);
    pos += scid.len;
    if (tok_vlen == 1) {
        p[pos++] = (unsigned char)tok_len;
    } else if (tok_vlen == 2) {
        p[pos++] = (unsigned char)(0x40 | tok_len >> 8);
        p[pos++] = (unsigned char)tok_len;
    } else if (tok_vlen == 4) {
        p[pos++] = (unsigned char)(0x80 | tok_len >> 24);
        p[pos++] = (unsigned char)(tok_len >> 16);
        p[pos++] = (unsigned char)(tok_len >> 8);
        p[pos++] = (unsigned char)tok_len;
    }
    if (tok_len) {
        memcpy(p + pos, token.buf, (size_t)tok_len);
        pos += tok_len;
    }
    p[pos++] = (unsigned char)(0x40 | length >> 8);
    p[pos++] = (unsigned char)length;
    for (i = pn_len - 1; i >= 0; i--) {
        p[pos + i] = (unsigned char)(pn >> (8 * (pn_len - 1 - i)));
    }
    memcpy(p + hlen, payload.buf, (size_t)payload.len);
    if (kc_seal_protect(self, pn, p, (int)hlen, (int)payload.len, pn_offset, pn_len) < 0) {
        PyByteArray_Resize(buf, old);
        openssl_error("packet seal");
        goto done;
    }
    result = PyLong_FromSsize_t(total);
done:
    if (dcid.obj) PyBuffer_Release(&dcid);
    if (scid.obj) PyBuffer_Release(&scid);
    if (token.obj) PyBuffer_Release(&token);
    if (payload.obj) PyBuffer_Release(&payload);
    return result;
}

/* Header protection removed from the packet src[0:len] (its packet number at pn_offset)
 * and the packet opened (the one home of both steps for open_packet and open_frames):
 * 0 with *payload (a new reference) and *pn set, and *header (a new reference) unless
 * header is NULL; 1 when the packet is too short to remove header protection; 2 when it
 * cannot be opened (over INT_MAX bytes, shorter than its tag, authentication failed); 3
 * when it opened but its reserved header bits are set (RFC 9000 17.2, 17.3.1: the
 * connection's error, PROTOCOL_VIOLATION); -1 with a Python error set. */
static int
kc_open_whole(KeyContext *self, const unsigned char *src, Py_ssize_t len,
              Py_ssize_t pn_offset, long long largest, PyObject **header,
              PyObject **payload, int64_t *pn)
{
    unsigned char stack[256];
    unsigned char *h = stack;
    Py_ssize_t header_len, ct_len;
    int64_t truncated;
    int rc = -1;

    *payload = NULL;
    if (header != NULL) {
        *header = NULL;
    }
    if (pn_offset < 1 || len < pn_offset + 4 + SAMPLE_LEN) {
        return 1;
    }
    if (len > INT_MAX) {
        return 2;
    }
    if (pn_offset + 4 > (Py_ssize_t)sizeof(stack)) {
        h = PyMem_Malloc((size_t)(pn_offset + 4));
        if (h == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    header_len = kc_unprotect(self, src, pn_offset, h, &truncated);
    if (header_len < 0) {
        goto done;
    }
    ct_len = len - header_len;
    if (ct_len < TAG_LEN) {
        rc = 2;
        goto done;
    }
    *pn = decode_pn(truncated, (int)(header_len - pn_offset) * 8, (int64_t)largest);
    *payload = PyBytes_FromStringAndSize(NULL, ct_len - TAG_LEN);
    if (*payload == NULL) {
        goto done;
    }
    if (kc_open(self, (uint64_t)*pn, h, (int)header_len, src + header_len, (int)ct_len,
                (unsigned char *)PyBytes_AS_STRING(*payload)) < 0) {
        Py_CLEAR(*payload);
        rc = 2;
        goto done;
    }
    if (h[0] & ((h[0] & 0x80) ? 0x0C : 0x18)) {
        Py_CLEAR(*payload);
        rc = 3;
        goto done;
    }
    if (header != NULL) {
        *header = PyBytes_FromStringAndSize((const char *)h, header_len);
        if (*header == NULL) {
            Py_CLEAR(*payload);
            goto done;
        }
    }
    rc = 0;
done:
    if (h != stack) {
        PyMem_Free(h);
    }
    return rc;
}

/* open_packet(packet, pn_offset, largest_pn) -> (plain_header, payload, pn), or the int
 * 1 (too short to remove header protection) or 2 (authentication failed), as
 * keys.PacketProtector.open does it; packet runs from the first byte to the end of this
 * packet. */
static PyObject *
kc_open_packet_py(KeyContext *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer packet = {0};
    Py_ssize_t pn_offset;
    long long largest;
    int64_t pn;
    int rc;
    PyObject *header, *payload, *result = NULL, *pn_obj;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "open_packet(packet, pn_offset, largest_pn)");
        return NULL;
    }
    pn_offset = PyLong_AsSsize_t(args[1]);
    if (pn_offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    largest = PyLong_AsLongLong(args[2]);
    if (largest == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (largest < -1 || largest >= PN_MAX) {
        PyErr_SetString(PyExc_ValueError, "largest_pn out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &packet, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    rc = kc_open_whole(self, packet.buf, packet.len, pn_offset, largest, &header, &payload,
                       &pn);
    PyBuffer_Release(&packet);
    if (rc != 0) {
        return rc < 0 ? NULL : PyLong_FromLong(rc);
    }
    pn_obj = PyLong_FromLongLong(pn);
    if (pn_obj != NULL) {
        result = PyTuple_Pack(3, header, payload, pn_obj);
        Py_DECREF(pn_obj);
    }
    Py_DECREF(header);
    Py_DECREF(payload);
    return result;
}

/* open_frames(data, pos, pn_offset, end, largest_pn, classes) -> (pn, payload, frames)
 * or None, or the int 3 (opened, reserved header bits set): open_packet on data[pos:end]
 * (pn_offset counted from data's start) and, when
 * classes is not None, the payload's frames as parse_frames makes them (frames None:
 * classes was None, or not the common case: let the Python reference parse them).  None
 * when the packet cannot be opened (too short to remove header protection, or
 * authentication failed: open_packet's 1 and 2).  One call per received long-header
 * packet instead of open_packet and parse_frames. */
static PyObject *
kc_open_frames_py(KeyContext *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data = {0};
    Py_ssize_t pos, end, pn_offset, len;
    long long largest;
    const unsigned char *src;
    int64_t pn;
    int rc;
    PyObject *payload, *frames, *pn_obj, *result = NULL, *classes;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "open_frames(data, pos, pn_offset, end, largest_pn, classes)");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    pn_offset = PyLong_AsSsize_t(args[2]);
    if (pn_offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyLong_AsSsize_t(args[3]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    largest = PyLong_AsLongLong(args[4]);
    if (largest == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (largest < -1 || largest >= PN_MAX) {
        PyErr_SetString(PyExc_ValueError, "largest_pn out of range");
        return NULL;
    }
    if (pos < 0 || end < 0) {
        PyErr_SetString(PyExc_ValueError, "pos and end must not be negative");
        return NULL;
    }
    classes = args[5];
    if (classes != Py_None && !qf_frame_classes_ok(classes)) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    /* the packet data[pos:end], clamped like a slice */
    if (end > data.len) {
        end = data.len;
    }
    len = end > pos ? end - pos : 0;
    src = (const unsigned char *)data.buf + (len ? pos : 0);
    rc = kc_open_whole(self, src, len, pn_offset - pos, largest, NULL, &payload, &pn);
    PyBuffer_Release(&data);
    if (rc != 0) {
        return rc < 0 ? NULL : rc == 3 ? PyLong_FromLong(3) : Py_NewRef(Py_None);
    }
    if (classes != Py_None) {
        frames = qf_parse_frames((const uint8_t *)PyBytes_AS_STRING(payload),
                                 PyBytes_GET_SIZE(payload), classes);
        if (frames == NULL) {
            Py_DECREF(payload);
            return NULL;
        }
    } else {
        frames = Py_NewRef(Py_None);
    }
    pn_obj = PyLong_FromLongLong(pn);
    if (pn_obj != NULL) {
        result = PyTuple_Pack(3, pn_obj, payload, frames);
        Py_DECREF(pn_obj);
    }
    Py_DECREF(payload);
    Py_DECREF(frames);
    return result;
}

static PyMethodDef kc_methods[] = {
    {"mask", (PyCFunction)kc_mask_py, METH_O, "5-byte header protection mask of a sample"},
    {"seal_packet", (PyCFunction)(void (*)(void))kc_seal_packet_py, METH_FASTCALL,
     "seal_packet(header, payload, pn) -> bytes: AEAD and header protection"},
    {"seal_long", (PyCFunction)(void (*)(void))kc_seal_long_py, METH_FASTCALL,
     "seal_long(buf, packet_type, version, dcid, scid, token, payload, pn, pn_len) -> int "
     "(the sealed long-header packet appended to buf), or None (left to the reference)"},
    {"open_packet", (PyCFunction)(void (*)(void))kc_open_packet_py, METH_FASTCALL,
     "open_packet(packet, pn_offset, largest_pn) -> (header, payload, pn), or 1 (too "
     "short) or 2 (authentication failed)"},
    {"open_frames", (PyCFunction)(void (*)(void))kc_open_frames_py, METH_FASTCALL,
     "open_frames(data, pos, pn_offset, end, largest_pn, classes) -> (pn, payload, "
     "frames | None), or None (too short, or authentication failed)"},
    {NULL},
};

PyTypeObject KeyContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quicflow.crypto._native.KeyContext",
    .tp_basicsize = sizeof(KeyContext),
    .tp_dealloc = (destructor)kc_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyContext(suite, key, iv, hp_key, secret=None): one key generation",
    .tp_getset = kc_getset,
    .tp_methods = kc_methods,
    .tp_new = kc_new,
};
