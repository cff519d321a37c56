/*
 * quicflow.crypto._native -- hkdf: the TLS 1.3 key schedule's primitives (RFC 5869,
 * RFC 8446 7.1) and the QUIC packet keys of a secret (RFC 9001 5.1, RFC 9369 3.3.2),
 * each one C call for what the Python code does with several HMACs:
 *   hkdf_extract(suite, salt, ikm)                      -> PRK
 *   hkdf_expand_label(suite, secret, label, length[, context])
 *   finished_verify_data(suite, base_key, transcript_hash)
 *   quic_keys(suite, secret, v2, with_next)             -> (key, iv, hp[, ku, key', iv'])
 *   initial_keys(salt, dcid, v2)                        -> both directions' Initial keys
 * All lengths are at most one hash long (one HMAC block), as every TLS 1.3 / QUIC label
 * is; the pure-Python code in quicflow.crypto.hkdf is the bit-identical reference.
 */
/* the one-block SHA-2 functions (deprecated in OpenSSL 3, still built by default) make an
 * HMAC of a short message ~2.5x faster than EVP_MAC: see fast_hmac below */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "native.h"

#include <openssl/core_names.h>
#include <openssl/objects.h>
#include <openssl/sha.h>

/* One EVP_MAC_CTX per hash, fetched once and re-keyed per call: about 0.3 us per HMAC
 * against 0.9 us for the one-shot HMAC(), which fetches and builds its context each time
 * (OpenSSL 3). 0: not tried yet, 1: ready, -1: unavailable (HMAC() is used). */
static EVP_MAC_CTX *hmac_ctxs[2];
static int hmac_ready;

static void
hmac_setup(void)
{
    static const char *names[2] = {"SHA256", "SHA384"};
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    int i;
    hmac_ready = -1;
    if (mac == NULL) {
        ERR_clear_error();
        return;
    }
    for (i = 0; i < 2; i++) {
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)names[i], 0);
        params[1] = OSSL_PARAM_construct_end();
        hmac_ctxs[i] = EVP_MAC_CTX_new(mac);
        if (hmac_ctxs[i] == NULL || EVP_MAC_CTX_set_params(hmac_ctxs[i], params) != 1) {
            for (; i >= 0; i--) {
                EVP_MAC_CTX_free(hmac_ctxs[i]);
                hmac_ctxs[i] = NULL;
            }
            EVP_MAC_free(mac);
            ERR_clear_error();
            return;
        }
    }
    EVP_MAC_free(mac); /* the contexts hold their own references */
    hmac_ready = 1;
}

#if !defined(OPENSSL_NO_DEPRECATED_3_0)
/* HMAC (RFC 2104) over SHA-256 (idx 0) or SHA-384 (idx 1) with the low-level hash
 * functions: no provider dispatch, no context set-up; the same bytes as EVP_MAC
 * (tests/test_crypto_hmac_native.py compares them with Python's hmac). */
#define FAST_HMAC(NAME, CTX, INIT, UPDATE, FINAL, ONESHOT, BLOCK, SIZE)                    \
    static void NAME(const unsigned char *key, size_t key_len, const unsigned char *data,   \
                     size_t len, unsigned char *out)                                        \
    {                                                                                       \
        unsigned char k[BLOCK], pad[BLOCK], inner[SIZE];                                    \
        CTX ctx;                                                                            \
        size_t i;                                                                           \
        memset(k, 0, sizeof(k));                                                            \
        if (key_len > BLOCK) {                                                              \
            ONESHOT(key, key_len, k);                                                       \
        } else if (key_len) {                                                               \
            memcpy(k, key, key_len);                                                        \
        }                                                                                   \
        for (i = 0; i < BLOCK; i++) {                                                       \
            pad[i] = k[i] ^ 0x36;                                                           \
        }                                                                                   \
        INIT(&ctx);                                                                         \
        UPDATE(&ctx, pad, BLOCK);                                                           \
        UPDATE(&ctx, data, len);                                                            \
        FINAL(inner, &ctx);                                                                 \
        for (i = 0; i < BLOCK; i++) {                                                       \
            pad[i] = k[i] ^ 0x5c;                                                           \
        }                                                                                   \
        INIT(&ctx);                                                                         \
        UPDATE(&ctx, pad, BLOCK);                                                           \
        UPDATE(&ctx, inner, SIZE);                                                          \
        FINAL(out, &ctx);                                                                   \
        OPENSSL_cleanse(k, sizeof(k));                                                      \
        OPENSSL_cleanse(pad, sizeof(pad));                                                  \
        OPENSSL_cleanse(inner, sizeof(inner));                                              \
        OPENSSL_cleanse(&ctx, sizeof(ctx));                                                 \
    }
FAST_HMAC(fast_hmac_sha256, SHA256_CTX, SHA256_Init, SHA256_Update, SHA256_Final, SHA256, 64,
          32)
FAST_HMAC(fast_hmac_sha384, SHA512_CTX, SHA384_Init, SHA384_Update, SHA384_Final, SHA384, 128,
          48)
#endif

int
hmac_digest(const EVP_MD *md, const unsigned char *key, size_t key_len,
            const unsigned char *data, size_t len, unsigned char *out, unsigned int *out_len)
{
    /* HMAC pads the key with zeros to the block size: an empty key is the same key as
     * one zero byte (EVP_MAC_init would take an empty key as "keep the previous one") */
    static const unsigned char zero = 0;
    int type = EVP_MD_get_type(md);
    int idx = type == NID_sha256 ? 0 : type == NID_sha384 ? 1 : -1;
#if !defined(OPENSSL_NO_DEPRECATED_3_0)
    if (idx == 0) {
        fast_hmac_sha256(key, key_len, data, len, out);
        *out_len = 32;
        return 0;
    }
    if (idx == 1) {
        fast_hmac_sha384(key, key_len, data, len, out);
        *out_len = 48;
        return 0;
    }
#endif
    if (hmac_ready == 0) {
        hmac_setup();
    }
    if (hmac_ready == 1 && idx >= 0) {
        size_t outl = 0;
        EVP_MAC_CTX *ctx = hmac_ctxs[idx];
        if (key_len == 0) {
            key = &zero;
            key_len = 1;
        }
        if (EVP_MAC_init(ctx, key, key_len, NULL) == 1 && EVP_MAC_update(ctx, data, len) == 1 &&
            EVP_MAC_final(ctx, out, &outl, EVP_MAX_MD_SIZE) == 1) {
            *out_len = (unsigned int)outl;
            return 0;
        }
        ERR_clear_error();
        return -1;
    }
    if (key_len > INT_MAX || HMAC(md, key, (int)key_len, data, len, out, out_len) == NULL) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* HMAC(secret, HkdfLabel(length, "tls13 " + label, context) || 0x01)[:length] */
static int
expand_label_ctx(const EVP_MD *md, const unsigned char *secret, size_t secret_len,
                 const char *label, size_t label_len, const unsigned char *context,
                 size_t context_len, int length, unsigned char *out)
{
    unsigned char info[2 + 1 + 255 + 1 + 255 + 1];
    unsigned char block[EVP_MAX_MD_SIZE];
    unsigned int block_len = 0;
    size_t n = 0;
    if (length < 0 || length > EVP_MD_get_size(md) || label_len + 6 > 255 || context_len > 255
        || secret_len > INT_MAX) {
        return -1;
    }
    info[n++] = (unsigned char)(length >> 8);
    info[n++] = (unsigned char)length;
    info[n++] = (unsigned char)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = (unsigned char)context_len;
    if (context_len) {
        memcpy(info + n, context, context_len);
        n += context_len;
    }
    info[n++] = 1; /* block counter */
    if (hmac_digest(md, secret, secret_len, info, n, block, &block_len) < 0) {
        return -1;
    }
    memcpy(out, block, (size_t)length);
    OPENSSL_cleanse(block, sizeof(block));
    return 0;
}

/* HKDF-Expand-Label with an empty context (the packet keys of table.c) */
int
hkdf_expand_label_raw(const EVP_MD *md, const unsigned char *secret, int secret_len,
                      const char *label, int length, unsigned char *out)
{
    if (secret_len < 0) {
        return -1;
    }
    return expand_label_ctx(md, secret, (size_t)secret_len, label, strlen(label), NULL, 0,
                            length, out);
}

/* hkdf_extract(suite, salt, ikm): HMAC-Hash(salt, ikm); an empty salt is hash_len zeros */
PyObject *
mod_hkdf_extract(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer salt, ikm;
    SuiteInfo info;
    unsigned char zeros[EVP_MAX_MD_SIZE] = {0};
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int out_len = 0;
    const unsigned char *salt_buf;
    size_t salt_len;
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*y*:hkdf_extract", &suite, &salt, &ikm)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    salt_buf = salt.len ? salt.buf : zeros;
    salt_len = salt.len ? (size_t)salt.len : (size_t)info.hash_len;
    if (hmac_digest(info.md(), salt_buf, salt_len, ikm.buf, (size_t)ikm.len, out, &out_len) <
        0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HKDF-Extract failed");
        goto done;
    }
    result = PyBytes_FromStringAndSize((const char *)out, out_len);
    OPENSSL_cleanse(out, sizeof(out));
done:
    PyBuffer_Release(&salt);
    PyBuffer_Release(&ikm);
    return result;
}

/* hkdf_expand_label(suite, secret, label, length[, context]) */
PyObject *
mod_hkdf_expand_label(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer secret, context = {0};
    const char *label;
    Py_ssize_t label_len;
    int length;
    SuiteInfo info;
    unsigned char out[EVP_MAX_MD_SIZE];
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*s#i|y*:hkdf_expand_label", &suite, &secret, &label,
                          &label_len, &length, &context)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    if (expand_label_ctx(info.md(), secret.buf, (size_t)secret.len, label, (size_t)label_len,
                         context.buf, context.buf ? (size_t)context.len : 0, length,
                         out) < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "HKDF-Expand-Label failed (length > hash length, or label or "
                        "context too long?)");
        goto done;
    }
    result = PyBytes_FromStringAndSize((const char *)out, length);
    OPENSSL_cleanse(out, sizeof(out));
done:
    PyBuffer_Release(&secret);
    if (context.buf != NULL) {
        PyBuffer_Release(&context);
    }
    return result;
}

/* finished_verify_data(suite, base_key, transcript_hash): HMAC(finished_key, hash) with
 * finished_key = HKDF-Expand-Label(base_key, "finished", "", hash_len) (RFC 8446 4.4.4) */
PyObject *
mod_finished_verify_data(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer base, thash;
    SuiteInfo info;
    unsigned char key[EVP_MAX_MD_SIZE], out[EVP_MAX_MD_SIZE];
    unsigned int out_len = 0;
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*y*:finished_verify_data", &suite, &base, &thash)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    if (expand_label_ctx(info.md(), base.buf, (size_t)base.len, "finished", 8, NULL, 0,
                         info.hash_len, key) < 0 ||
        hmac_digest(info.md(), key, (size_t)info.hash_len, thash.buf, (size_t)thash.len, out,
                    &out_len) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: Finished MAC failed");
        goto done;
    }
    result = PyBytes_FromStringAndSize((const char *)out, out_len);
done:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(out, sizeof(out));
    PyBuffer_Release(&base);
    PyBuffer_Release(&thash);
    return result;
}

/* quic_keys(suite, secret, v2, with_next): (key, iv, hp) of secret with the "quic ..."
 * labels ("quicv2 ..." when v2); with_next adds the "quic ku" secret of the next key
 * phase and its key and iv: (key, iv, hp, ku, next_key, next_iv). */
PyObject *
mod_quic_keys(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer secret;
    int v2, with_next;
    SuiteInfo info;
    const EVP_MD *md;
    unsigned char key[MAX_KEY_LEN], iv[IV_LEN], hp[MAX_KEY_LEN];
    unsigned char ku[MAX_HASH_LEN], nkey[MAX_KEY_LEN], niv[IV_LEN];
    const char *lk = "quic key", *li = "quic iv", *lh = "quic hp", *lu = "quic ku";
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*pp:quic_keys", &suite, &secret, &v2, &with_next)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    if (v2) {
        lk = "quicv2 key", li = "quicv2 iv", lh = "quicv2 hp", lu = "quicv2 ku";
    }
    md = info.md();
    if (expand_label_ctx(md, secret.buf, (size_t)secret.len, lk, strlen(lk), NULL, 0,
                         info.key_len, key) < 0 ||
        expand_label_ctx(md, secret.buf, (size_t)secret.len, li, strlen(li), NULL, 0, IV_LEN,
                         iv) < 0 ||
        expand_label_ctx(md, secret.buf, (size_t)secret.len, lh, strlen(lh), NULL, 0,
                         info.key_len, hp) < 0 ||
        (with_next &&
         (expand_label_ctx(md, secret.buf, (size_t)secret.len, lu, strlen(lu), NULL, 0,
                           info.hash_len, ku) < 0 ||
          expand_label_ctx(md, ku, (size_t)info.hash_len, lk, strlen(lk), NULL, 0,
                           info.key_len, nkey) < 0 ||
          expand_label_ctx(md, ku, (size_t)info.hash_len, li, strlen(li), NULL, 0, IV_LEN,
                           niv) < 0))) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HKDF-Expand-Label failed");
        goto wipe;
    }
    if (with_next) {
        result = Py_BuildValue("(y#y#y#y#y#y#)", key, (Py_ssize_t)info.key_len, iv,
                               (Py_ssize_t)IV_LEN, hp, (Py_ssize_t)info.key_len, ku,
                               (Py_ssize_t)info.hash_len, nkey, (Py_ssize_t)info.key_len, niv,
                               (Py_ssize_t)IV_LEN);
    } else {
        result = Py_BuildValue("(y#y#y#)", key, (Py_ssize_t)info.key_len, iv,
                               (Py_ssize_t)IV_LEN, hp, (Py_ssize_t)info.key_len);
    }
wipe:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(ku, sizeof(ku));
    OPENSSL_cleanse(nkey, sizeof(nkey));
done:
    PyBuffer_Release(&secret);
    return result;
}

/* initial_keys(salt, dcid, v2): the Initial secrets of a client's first DCID (RFC 9001
 * 5.2: HKDF-Extract(salt, dcid), then "client in" / "server in") and the packet keys of
 * each (quic_keys), all SHA-256 / AES-128-GCM: (client_secret, client_key, client_iv,
 * client_hp, server_secret, server_key, server_iv, server_hp). */
PyObject *
mod_initial_keys(PyObject *module, PyObject *args)
{
    Py_buffer salt, dcid;
    int v2;
    const EVP_MD *md = EVP_sha256();
    unsigned char initial[EVP_MAX_MD_SIZE], secret[2][32], key[2][16], iv[2][IV_LEN],
        hp[2][16];
    unsigned int initial_len = 0;
    const char *labels[2] = {"client in", "server in"};
    const char *lk = "quic key", *li = "quic iv", *lh = "quic hp";
    PyObject *result = NULL;
    int i;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*p:initial_keys", &salt, &dcid, &v2)) {
        return NULL;
    }
    if (v2) {
        lk = "quicv2 key", li = "quicv2 iv", lh = "quicv2 hp";
    }
    if (hmac_digest(md, salt.buf, (size_t)salt.len, dcid.buf, (size_t)dcid.len, initial,
                    &initial_len) < 0) {
        goto fail;
    }
    for (i = 0; i < 2; i++) {
        if (expand_label_ctx(md, initial, initial_len, labels[i], 9, NULL, 0, 32,
                             secret[i]) < 0 ||
            expand_label_ctx(md, secret[i], 32, lk, strlen(lk), NULL, 0, 16, key[i]) < 0 ||
            expand_label_ctx(md, secret[i], 32, li, strlen(li), NULL, 0, IV_LEN, iv[i]) < 0 ||
            expand_label_ctx(md, secret[i], 32, lh, strlen(lh), NULL, 0, 16, hp[i]) < 0) {
            goto fail;
        }
    }
    result = Py_BuildValue("(y#y#y#y#y#y#y#y#)", secret[0], (Py_ssize_t)32, key[0],
                           (Py_ssize_t)16, iv[0], (Py_ssize_t)IV_LEN, hp[0], (Py_ssize_t)16,
                           secret[1], (Py_ssize_t)32, key[1], (Py_ssize_t)16, iv[1],
                           (Py_ssize_t)IV_LEN, hp[1], (Py_ssize_t)16);
    goto wipe;
fail:
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL: Initial key derivation failed");
wipe:
    OPENSSL_cleanse(initial, sizeof(initial));
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    OPENSSL_cleanse(hp, sizeof(hp));
    PyBuffer_Release(&salt);
    PyBuffer_Release(&dcid);
    return result;
}
