/*
 * quicflow.crypto._native: batch QUIC 1-RTT packet protection on OpenSSL's libcrypto.
 * Internal header shared by the C sources of the extension (not a public API).
 *
 * The native half of NativeOffloadEngine (see native.py).  Bit-identical to the pure-Python
 * SoftwareOffloadEngine (offload.py), which is the reference:
 *   - AEAD: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; nonce = iv XOR pn (RFC 9001 5.3).
 *   - Header protection: AES-ECB mask / ChaCha20 keystream with counter||nonce = sample
 *     (RFC 9001 5.4).
 *   - Key phases: current / next / previous keys, rotation on a successfully opened
 *     next-phase packet, next-generation secrets by HKDF-Expand-Label "quic ku" (6.1).
 *   - Packet-number recovery: RFC 9000 A.3.
 *
 * Sources:
 *   module.c  module definition, method table, PyInit__native (type registration).
 *   keys.c    suites, OpenSSL errors, HKDF-Expand-Label, the KeyContext type (AEAD and
 *             header-protection EVP contexts of one key generation).
 *   table.c   the CidState type (one offload-table entry) and key rotation ("quic ku").
 *   batch.c   seal(table, buf, packets) / open(table, buf, packets, result_type) loops.
 * The per-packet primitives (nonce, mask, seal, open of one KeyContext) are static inline
 * below so that the batch loops inline them exactly as in a single translation unit.
 *
 * Types:
 *   KeyContext(suite, key, iv, hp_key, secret=None): the keys of one key-phase generation,
 *       with its EVP_CIPHER_CTX objects (AEAD encrypt, AEAD decrypt, header protection)
 *       initialised once; per packet only the nonce is set.
 *   CidState(suite, hp_key, key_phase, current, next, largest_pn): one table entry (shared
 *       by the aliases of a connection), mirrors offload.CidKeyState.
 * Functions:
 *   seal(table, buf, packets) -> None
 *   open(table, buf, packets, result_type) -> (list[result | None], failures)
 *   hkdf_expand_label(suite, secret, label, length) -> bytes   (for tests)
 *
 * The GIL is held throughout: the table entries and their EVP contexts are shared mutable
 * state, exactly like the Python engine's.
 */
#ifndef QUICFLOW_NATIVE_H
#define QUICFLOW_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <string.h>

#define SUITE_AES128 0x1301
#define SUITE_AES256 0x1302
#define SUITE_CHACHA 0x1303
#define TAG_LEN 16
#define IV_LEN 12
#define SAMPLE_LEN 16
#define MAX_KEY_LEN 32
#define MAX_HASH_LEN 48
#define PN_MAX ((int64_t)1 << 62)

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#define EVP_MD_get_size EVP_MD_size
#endif

/* ---------------------------------------------------------------------------------- */
/* suites, errors, key derivation (keys.c)                                            */

typedef struct {
    int key_len;
    int hash_len;
    int chacha;
    const EVP_CIPHER *(*aead)(void);
    const EVP_CIPHER *(*hp)(void);
    const EVP_MD *(*md)(void);
} SuiteInfo;

/* 0 and *info filled, or -1 with ValueError set. */
int suite_info(long suite, SuiteInfo *info);

/* Sets RuntimeError from the OpenSSL error queue (and clears it); returns NULL. */
PyObject *openssl_error(const char *what);

/* -1 with ValueError set when view->len != want. */
int check_len(Py_buffer *view, Py_ssize_t want, const char *what);

/* HKDF-Expand-Label (RFC 8446 7.1) with an empty context, length <= hash length;
 * 0 on success, -1 (no exception set) on failure. */
int hkdf_expand_label_raw(const EVP_MD *md, const unsigned char *secret, int secret_len,
                          const char *label, int length, unsigned char *out);

/* ---------------------------------------------------------------------------------- */
/* KeyContext (keys.c)                                                                */

typedef struct {
    PyObject_HEAD
    long suite;
    int chacha;
    int key_len;
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    EVP_CIPHER_CTX *hp;
    unsigned char iv[IV_LEN];
    PyObject *hp_key; /* bytes */
    PyObject *secret; /* bytes or None */
} KeyContext;

extern PyTypeObject KeyContextType;

/* New reference; key/iv/hp_key lengths must already be checked. */
KeyContext *kc_create(long suite, const unsigned char *key, const unsigned char *iv,
                      PyObject *hp_key, PyObject *secret);

/* The 5-byte header-protection mask for a 16-byte sample. */
static inline int
kc_mask(KeyContext *kc, const unsigned char *sample, unsigned char *mask)
{
    int outl;
    if (kc->chacha) {
        static const unsigned char zeros[5] = {0};
        if (EVP_EncryptInit_ex(kc->hp, NULL, NULL, NULL, sample) != 1 ||
            EVP_EncryptUpdate(kc->hp, mask, &outl, zeros, 5) != 1) {
            return -1;
        }
    } else {
        unsigned char block[SAMPLE_LEN];
        if (EVP_EncryptUpdate(kc->hp, block, &outl, sample, SAMPLE_LEN) != 1) {
            return -1;
        }
        memcpy(mask, block, 5);
    }
    return 0;
}

static inline void
make_nonce(const unsigned char *iv, uint64_t pn, unsigned char *nonce)
{
    int i;
    memcpy(nonce, iv, IV_LEN);
    for (i = 0; i < 8; i++) {
        nonce[IV_LEN - 1 - i] ^= (unsigned char)(pn >> (8 * i));
    }
}

/* Encrypt data[0:len] in place, tag written at data[len:len+16]. */
static inline int
kc_seal(KeyContext *kc, uint64_t pn, const unsigned char *aad, int aad_len, unsigned char *data,
        int len)
{
    unsigned char nonce[IV_LEN];
    int outl;
    make_nonce(kc->iv, pn, nonce);
    if (EVP_EncryptInit_ex(kc->enc, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(kc->enc, NULL, &outl, aad, aad_len) != 1) {
        return -1;
    }
    if (len > 0 && EVP_EncryptUpdate(kc->enc, data, &outl, data, len) != 1) {
        return -1;
    }
    if (EVP_EncryptFinal_ex(kc->enc, data + len, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(kc->enc, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, data + len) != 1) {
        return -1;
    }
    return 0;
}

/* Decrypt ct[0:ct_len] (tag included) into out; 0 on success, -1 on any failure. */
static inline int
kc_open(KeyContext *kc, uint64_t pn, const unsigned char *aad, int aad_len,
        const unsigned char *ct, int ct_len, unsigned char *out)
{
    unsigned char nonce[IV_LEN];
    int outl, len = ct_len - TAG_LEN;
    make_nonce(kc->iv, pn, nonce);
    if (len < 0 || EVP_DecryptInit_ex(kc->dec, NULL, NULL, NULL, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(kc->dec, EVP_CTRL_AEAD_SET_TAG, TAG_LEN,
                            (void *)(ct + len)) != 1 ||
        EVP_DecryptUpdate(kc->dec, NULL, &outl, aad, aad_len) != 1) {
        goto fail;
    }
    if (len > 0 && EVP_DecryptUpdate(kc->dec, out, &outl, ct, len) != 1) {
        goto fail;
    }
    if (EVP_DecryptFinal_ex(kc->dec, out + len, &outl) != 1) {
        goto fail;
    }
    return 0;
fail:
    ERR_clear_error();
    return -1;
}

/* ---------------------------------------------------------------------------------- */
/* CidState (table.c)                                                                 */

typedef struct {
    PyObject_HEAD
    long suite_id;
    PyObject *suite; /* as given (a CipherSuite) */
    PyObject *hp_key;
    int key_phase;
    KeyContext *current;
    KeyContext *next;
    KeyContext *previous; /* or NULL */
    int64_t largest_pn;
    int64_t phase_start_pn;
} CidState;

extern PyTypeObject CidStateType;

/* previous := current, current := next, next := "quic ku" generation of it; flip phase.
 * 0, or -1 with an exception set. */
int cs_rotate(CidState *self);

/* ---------------------------------------------------------------------------------- */
/* module functions (batch.c, keys.c), registered in module.c                         */

PyObject *mod_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_hkdf_expand_label(PyObject *module, PyObject *args);

#endif /* QUICFLOW_NATIVE_H */
