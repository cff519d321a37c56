/*
 * quicflow.crypto._native -- hmac: HMAC (RFC 2104) and running hashes over SHA-256/384 for
 * the key schedule of hkdf.c. With OpenSSL's low-level SHA-2 functions (deprecated in
 * 3.0, present in every 3.x) a keyed HMAC is two hash states copied as plain structs per
 * message and a transcript hash is read by copying its state; a build without them
 * (OPENSSL_NO_DEPRECATED) takes the EVP_MAC / EVP_MD_CTX paths, the same bytes.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include "native.h"

#include <openssl/core_names.h>
#include <openssl/objects.h>

/* One EVP_MAC_CTX per hash, fetched once and re-keyed per call: about 0.3 us per HMAC
 * against 0.9 us for the one-shot HMAC(), which fetches and builds its context each time
 * (OpenSSL 3). 0: not tried yet, 1: ready, -1: unavailable (HMAC() is used). Used only
 * where the low-level SHA functions are not (OPENSSL_NO_DEPRECATED_3_0 builds). */
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

static int
hmac_digest_evp(const EVP_MD *md, int idx, const unsigned char *key, size_t key_len,
                const unsigned char *data, size_t len, unsigned char *out,
                unsigned int *out_len)
{
    /* HMAC pads the key with zeros to the block size: an empty key is the same key as
     * one zero byte (EVP_MAC_init would take an empty key as "keep the previous one") */
    static const unsigned char zero = 0;
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



static int
md_index(const EVP_MD *md)
{
    int type = EVP_MD_get_type(md);
    return type == NID_sha256 ? 0 : type == NID_sha384 ? 1 : -1;
}

/* key must stay valid while k is used (the EVP path reads it per message) */
void
hmac_key_init(HmacKey *k, const EVP_MD *md, const unsigned char *key, size_t key_len)
{
    k->md = md;
    k->idx = md_index(md);
    k->low_level = 0;
    k->hash_len = EVP_MD_get_size(md);
    k->key = key;
    k->key_len = key_len;
#ifdef QF_LOW_LEVEL_SHA
    if (k->idx >= 0) {
        unsigned char pad[128], hashed[64];
        size_t block = k->idx == 0 ? 64 : 128, i;
        memset(pad, 0, sizeof(pad));
        if (key_len > block) { /* RFC 2104: a long key is hashed first */
            if (k->idx == 0) {
                SHA256(key, key_len, hashed);
            } else {
                SHA384(key, key_len, hashed);
            }
            memcpy(pad, hashed, (size_t)k->hash_len);
            OPENSSL_cleanse(hashed, sizeof(hashed));
        } else if (key_len) {
            memcpy(pad, key, key_len);
        }
        for (i = 0; i < block; i++) {
            pad[i] ^= 0x36;
        }
        if (k->idx == 0) {
            SHA256_Init(&k->inner.s256);
            SHA256_Update(&k->inner.s256, pad, block);
        } else {
            SHA384_Init(&k->inner.s512);
            SHA384_Update(&k->inner.s512, pad, block);
        }
        for (i = 0; i < block; i++) {
            pad[i] ^= 0x36 ^ 0x5c;
        }
        if (k->idx == 0) {
            SHA256_Init(&k->outer.s256);
            SHA256_Update(&k->outer.s256, pad, block);
        } else {
            SHA384_Init(&k->outer.s512);
            SHA384_Update(&k->outer.s512, pad, block);
        }
        OPENSSL_cleanse(pad, sizeof(pad));
        k->low_level = 1;
    }
#endif
}

void
hmac_key_wipe(HmacKey *k)
{
#ifdef QF_LOW_LEVEL_SHA
    if (k->low_level) {
        OPENSSL_cleanse(&k->inner, sizeof(k->inner));
        OPENSSL_cleanse(&k->outer, sizeof(k->outer));
    }
#endif
    k->low_level = 0;
}

/* HMAC(k, data) into out (hash_len bytes); 0 or -1 (no exception set) */
int
hmac_key_mac(const HmacKey *k, const unsigned char *data, size_t len, unsigned char *out)
{
    unsigned int out_len = 0;
#ifdef QF_LOW_LEVEL_SHA
    if (k->low_level) {
        unsigned char inner_hash[64];
        if (k->idx == 0) {
            SHA256_CTX c = k->inner.s256;
            SHA256_Update(&c, data, len);
            SHA256_Final(inner_hash, &c);
            c = k->outer.s256;
            SHA256_Update(&c, inner_hash, 32);
            SHA256_Final(out, &c);
            OPENSSL_cleanse(&c, sizeof(c));
        } else {
            SHA512_CTX c = k->inner.s512;
            SHA384_Update(&c, data, len);
            SHA384_Final(inner_hash, &c);
            c = k->outer.s512;
            SHA384_Update(&c, inner_hash, 48);
            SHA384_Final(out, &c);
            OPENSSL_cleanse(&c, sizeof(c));
        }
        OPENSSL_cleanse(inner_hash, sizeof(inner_hash));
        return 0;
    }
#endif
    return hmac_digest_evp(k->md, k->idx, k->key, k->key_len, data, len, out, &out_len);
}

int
hmac_digest(const EVP_MD *md, const unsigned char *key, size_t key_len,
            const unsigned char *data, size_t len, unsigned char *out, unsigned int *out_len)
{
    HmacKey k;
    int rc;
    hmac_key_init(&k, md, key, key_len);
    rc = hmac_key_mac(&k, data, len, out);
    hmac_key_wipe(&k);
    *out_len = (unsigned int)k.hash_len;
    return rc;
}

/* HMAC(k, HkdfLabel(length, "tls13 " + label, context) || 0x01)[:length] */
int
expand_label_key(const HmacKey *k, const char *label, size_t label_len,
                 const unsigned char *context, size_t context_len, int length,
                 unsigned char *out)
{
    unsigned char info[2 + 1 + 255 + 1 + 255 + 1];
    unsigned char block[EVP_MAX_MD_SIZE];
    size_t n = 0;
    if (length < 0 || length > k->hash_len || label_len + 6 > 255 || context_len > 255) {
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
    if (hmac_key_mac(k, info, n, block) < 0) {
        return -1;
    }
    memcpy(out, block, (size_t)length);
    OPENSSL_cleanse(block, sizeof(block));
    return 0;
}

int
rh_init(RunningHash *h, const EVP_MD *md)
{
    h->idx = md_index(md);
    h->low_level = 0;
    h->evp = h->scratch = NULL;
#ifdef QF_LOW_LEVEL_SHA
    if (h->idx >= 0) {
        h->low_level = 1;
        return h->idx == 0 ? SHA256_Init(&h->c.s256) - 1 : SHA384_Init(&h->c.s512) - 1;
    }
#endif
    h->evp = EVP_MD_CTX_new();
    h->scratch = EVP_MD_CTX_new();
    return h->evp != NULL && h->scratch != NULL && EVP_DigestInit_ex(h->evp, md, NULL) == 1
               ? 0
               : -1;
}

int
rh_update(RunningHash *h, const void *data, size_t len)
{
#ifdef QF_LOW_LEVEL_SHA
    if (h->low_level) {
        return h->idx == 0 ? SHA256_Update(&h->c.s256, data, len) - 1
                           : SHA384_Update(&h->c.s512, data, len) - 1;
    }
#endif
    return EVP_DigestUpdate(h->evp, data, len) == 1 ? 0 : -1;
}

/* *out = the hash of what was fed so far; h goes on as it was */
int
rh_peek(RunningHash *h, unsigned char *out)
{
    unsigned int n = 0;
#ifdef QF_LOW_LEVEL_SHA
    if (h->low_level) {
        if (h->idx == 0) {
            SHA256_CTX c = h->c.s256;
            return SHA256_Final(out, &c) - 1;
        } else {
            SHA512_CTX c = h->c.s512;
            return SHA384_Final(out, &c) - 1;
        }
    }
#endif
    return EVP_MD_CTX_copy_ex(h->scratch, h->evp) == 1 &&
                   EVP_DigestFinal_ex(h->scratch, out, &n) == 1
               ? 0
               : -1;
}

void
rh_free(RunningHash *h)
{
    EVP_MD_CTX_free(h->evp);
    EVP_MD_CTX_free(h->scratch);
    h->evp = h->scratch = NULL;
}

/* reset_token(key, cid) -> bytes: the stateless reset token of one of our connection IDs,
 * HMAC-SHA256(key, "quicflow stateless reset" | cid)[:16] (crypto/stateless_reset.py).
 * An endpoint's key is static, so its keyed HMAC (the two pad blocks) is kept for the
 * next call with the same key: one entry, keys up to 64 bytes (the GIL is held). */
#define RESET_LABEL "quicflow stateless reset"
#define RESET_LABEL_LEN (sizeof(RESET_LABEL) - 1)

static HmacKey reset_hmac;
static unsigned char reset_key[64];
static size_t reset_key_len;
static int reset_cached;

PyObject *
mod_reset_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer key, cid;
    unsigned char stack[RESET_LABEL_LEN + 64], mac[EVP_MAX_MD_SIZE];
    unsigned char *data = stack;
    size_t len;
    int rc;
    HmacKey once;
    const HmacKey *k = &reset_hmac;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "reset_token(key, cid)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &cid, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    len = RESET_LABEL_LEN + (size_t)cid.len;
    if (len > sizeof(stack)) {
        data = PyMem_Malloc(len);
        if (data == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    memcpy(data, RESET_LABEL, RESET_LABEL_LEN);
    memcpy(data + RESET_LABEL_LEN, cid.buf, (size_t)cid.len);
    if ((size_t)key.len <= sizeof(reset_key)) {
        if (!reset_cached || reset_key_len != (size_t)key.len ||
            memcmp(reset_key, key.buf, (size_t)key.len) != 0) {
            if (reset_cached) {
                hmac_key_wipe(&reset_hmac);
            }
            memcpy(reset_key, key.buf, (size_t)key.len);
            reset_key_len = (size_t)key.len;
            hmac_key_init(&reset_hmac, EVP_sha256(), reset_key, reset_key_len);
            reset_cached = 1;
        }
        rc = hmac_key_mac(k, data, len, mac);
    } else { /* (a longer key: keyed for this call only) */
        hmac_key_init(&once, EVP_sha256(), key.buf, (size_t)key.len);
        rc = hmac_key_mac(&once, data, len, mac);
        hmac_key_wipe(&once);
    }
    if (rc < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HMAC failed");
    } else {
        result = PyBytes_FromStringAndSize((const char *)mac, 16);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
done:
    if (data != stack) {
        PyMem_Free(data);
    }
    PyBuffer_Release(&cid);
    PyBuffer_Release(&key);
    return result;
}
