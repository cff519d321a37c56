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
 *   hmac.c    HMAC and running transcript hashes over SHA-256/384 (low-level SHA-2).
 *   hkdf.c    the TLS 1.3 key schedule steps and QUIC packet keys, a server's schedule.
 *   keys.c    suites, OpenSSL errors, HKDF-Expand-Label, the KeyContext type (AEAD and
 *             header-protection EVP contexts of one key generation).
 *   table.c   the CidState type (one offload-table entry) and key rotation ("quic ku").
 *   batch.c   seal(table, buf, packets) / open(table, buf, packets, result_type) loops.
 *   coalesce.c open_run(table, buf, packets): open a run and coalesce its STREAM data.
 *   stream_run.c seal_stream_run(...): frame and seal a run of one-STREAM-frame packets.
 *   tparams.c  decode_tparams(...): the common case of a peer's transport parameters.
 *   header.c   parse_header(...): the common packet headers of a received datagram;
 *              push_short_packet(...): a 1-RTT packet's plaintext appended for the seal.
 *   frames.c   parse_frames(...): the frames of a handshake or plain 1-RTT packet.
 *   objects.c  the parsers' objects (slotted dataclasses) built without their __init__.
 *   hello.c    parse_client_hello(body): the common case of a TLS ClientHello.
 *   ticket.c   ticket_message(...): a TLS server's NewSessionTicket in one call;
 *              address_token(...): an address validation token sealed in one call.
 *   ack.c      ack_received(...): LossDetection.on_ack_received's common case;
 *              ack_frame(...): an ACK frame written (ack_send.encode_ack_python's twin).
 *   idle.c     effective_idle(conn): the idle timeout in force (idle.py's twin).
 *   sent.c     packet_sent(...): what send.py records for each packet it built.
 * The per-packet primitives (nonce, mask, seal, open of one KeyContext) are static inline
 * below so that the batch loops inline them exactly as in a single translation unit.
 *
 * Types:
 *   KeyContext(suite, key, iv, hp_key, secret=None): the keys of one key-phase generation,
 *       keyed into the process's shared EVP_CIPHER_CTX objects (one per suite and role)
 *       when a run of packets starts; per packet only the nonce is set.
 *   CidState(suite, hp_key, key_phase, current, next, largest_pn): one table entry (shared
 *       by the aliases of a connection), mirrors offload.CidKeyState.
 * Functions:
 *   seal(table, buf, packets) -> None
 *   open(table, buf, packets, result_type) -> (list[result | None], failures)
 *   open_run(table, buf, packets) -> (list[entry], failures)   (see offload.RunEntry)
 *   seal_stream_run(table, buf, key, pn, pn_len, stream_id, data, start, end, offset,
 *                   off_len, data_cap, count, fin[, dcid]) -> packets built
 *   hkdf_expand_label(suite, secret, label, length) -> bytes   (for tests)
 *   tls_server_flight: a TLS server's key schedule, the transcript hashed once (hkdf.c)
 *   _gcm_nonce_param(on) -> bool: for tests, the AES-GCM set-up by parameter or by init
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
#include <openssl/sha.h>
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#include <openssl/core_names.h>
#include <openssl/params.h>
#define QF_OSSL_PARAMS 1 /* OpenSSL 3's parameter calls for the per-packet AEAD set-up */
#endif
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

/* ---------------------------------------------------------------------------------- */
/* HMAC and running hashes (hmac.c)                                                   */

#if !defined(OPENSSL_NO_DEPRECATED_3_0) && !defined(OPENSSL_NO_SHA256) && \
    !defined(OPENSSL_NO_SHA512)
#define QF_LOW_LEVEL_SHA 1 /* the SHA256_CTX / SHA512_CTX states below */
#endif

/* An HMAC key made ready for several messages: with the low-level SHA functions, the
 * hash states after the inner and outer pad blocks (two compressions per message
 * instead of four, no provider calls: about 0.1 us per HMAC against 0.33 us for the
 * re-keyed EVP_MAC_CTX); otherwise the key itself for hmac_digest_evp. */
typedef struct {
    const EVP_MD *md;
    int idx;       /* 0 SHA-256, 1 SHA-384, -1 another digest */
    int low_level; /* inner/outer below are set */
    int hash_len;
    const unsigned char *key;
    size_t key_len;
#ifdef QF_LOW_LEVEL_SHA
    union {
        SHA256_CTX s256;
        SHA512_CTX s512;
    } inner, outer;
#endif
} HmacKey;

/* key must stay valid while k is used (the EVP path reads it per message) */
void hmac_key_init(HmacKey *k, const EVP_MD *md, const unsigned char *key, size_t key_len);
void hmac_key_wipe(HmacKey *k);
/* HMAC(k, data) into out (hash_len bytes); 0 or -1 (no exception set) */
int hmac_key_mac(const HmacKey *k, const unsigned char *data, size_t len, unsigned char *out);
/* HMAC(k, HkdfLabel(length, "tls13 " + label, context) || 0x01)[:length]; 0 or -1 */
int expand_label_key(const HmacKey *k, const char *label, size_t label_len,
                     const unsigned char *context, size_t context_len, int length,
                     unsigned char *out);

/* A running transcript hash: a low-level SHA-256/384 state (a struct copy to read the
 * hash so far), or an EVP_MD_CTX pair without the low-level functions. */
typedef struct {
    int low_level;
    int idx;
#ifdef QF_LOW_LEVEL_SHA
    union {
        SHA256_CTX s256;
        SHA512_CTX s512;
    } c;
#endif
    EVP_MD_CTX *evp, *scratch;
} RunningHash;

/* 0 or -1 each; rh_peek: the hash of what was fed so far (h goes on as it was) */
int rh_init(RunningHash *h, const EVP_MD *md);
int rh_update(RunningHash *h, const void *data, size_t len);
int rh_peek(RunningHash *h, unsigned char *out);
void rh_free(RunningHash *h);

/* HMAC(key, data) with md (SHA-256 or SHA-384 on a reused, pre-fetched EVP_MAC context;
 * other digests through HMAC()); *out_len set; 0 on success, -1 (no exception) on failure.
 * The GIL serialises every use of the shared contexts. */
int hmac_digest(const EVP_MD *md, const unsigned char *key, size_t key_len,
                const unsigned char *data, size_t len, unsigned char *out,
                unsigned int *out_len);

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
    int suite_index;     /* 0..KC_SUITES-1: which pool of contexts */
    int slot[4];         /* per role (KC_ROLES): index of the pool entry it holds, or -1 */
    unsigned char key[MAX_KEY_LEN];
    unsigned char hp_raw[MAX_KEY_LEN];
    unsigned char iv[IV_LEN];
    PyObject *hp_key; /* bytes */
    PyObject *secret; /* bytes or None */
} KeyContext;

extern PyTypeObject KeyContextType;

/* New reference; key/iv/hp_key lengths must already be checked. */
KeyContext *kc_create(long suite, const unsigned char *key, const unsigned char *iv,
                      PyObject *hp_key, PyObject *secret);

/* Roles of the shared EVP contexts: AEAD encrypt, AEAD decrypt, header protection of
 * packets we seal and of packets we open (two, so that a connection that both sends and
 * receives does not re-key one context back and forth). */
#define KC_ENC 0
#define KC_DEC 1
#define KC_HP 2
#define KC_HP_OPEN 3
#define KC_ROLES 4
#define KC_SUITES 3

/* The EVP contexts (about 0.6-1 KB of OpenSSL memory each) do not belong to a
 * KeyContext for its life, which kept four with every idle connection: each suite and
 * role has a pool of at most KC_POOL contexts for the process. A KeyContext takes an
 * entry on first use and keeps it (no re-keying while it holds it); when the pool is
 * full the entry taken longest ago is handed over (FIFO) and re-keyed, and its former
 * holder takes another when it next needs one. So the connections in use keep their
 * contexts while idle ones hold none. kc_dealloc returns its entries. The GIL serialises
 * every use. */
#define KC_POOL 512

typedef struct {
    EVP_CIPHER_CTX *ctx;
    KeyContext *owner; /* NULL: free (ctx kept for the next taker) */
} PoolEntry;

typedef struct {
    PoolEntry entries[KC_POOL];
    int used;          /* entries[0:used] have been created */
    int hand;          /* next entry to hand over when full */
    int free_count;
    int free[KC_POOL]; /* entries returned by kc_dealloc */
} CtxPool;

extern CtxPool kc_pools[KC_SUITES][KC_ROLES];

/* Take a pool entry for role ``which`` and key it with kc's key; the context, or NULL
 * with the reason left in OpenSSL's error queue (no Python exception). */
EVP_CIPHER_CTX *kc_acquire(KeyContext *kc, int which);

static inline EVP_CIPHER_CTX *
kc_ctx(KeyContext *kc, int which)
{
    int i = kc->slot[which];
    if (i >= 0) {
        return kc_pools[kc->suite_index][which].entries[i].ctx;
    }
    return kc_acquire(kc, which);
}

/* The 5-byte header-protection mask for a 16-byte sample (which: KC_HP or KC_HP_OPEN). */
static inline int
kc_mask(KeyContext *kc, int which, const unsigned char *sample, unsigned char *mask)
{
    int outl;
    EVP_CIPHER_CTX *hp = kc_ctx(kc, which);
    if (hp == NULL) {
        return -1;
    }
    if (kc->chacha) {
        static const unsigned char zeros[5] = {0};
        if (EVP_EncryptInit_ex(hp, NULL, NULL, NULL, sample) != 1 ||
            EVP_EncryptUpdate(hp, mask, &outl, zeros, 5) != 1) {
            return -1;
        }
    } else {
        unsigned char block[SAMPLE_LEN];
        if (EVP_EncryptUpdate(hp, block, &outl, sample, SAMPLE_LEN) != 1) {
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

/* The per-packet AEAD set-up with OpenSSL 3 (measured with callgrind on 3.0: about 2,500
 * instructions of a 1200-byte packet's 5,750 to seal, 2,700 of 5,550 to open, were the
 * set-up, not the cipher). EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) runs the whole
 * init each packet: it forgets the context's IV length and asks the provider for it again
 * (a get_ctx_params with its parameter look-ups), and the tag ctrl builds a parameter and
 * looks it up in its turn. For AES-GCM the nonce goes in as the provider's "tlsivfixed"
 * parameter (OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED) with the length (size_t)-1, the GCM
 * code's special case "restores whole IV" (in OpenSSL 3.0 through the current master:
 * the context's 12-byte IV replaced, to be used by the next update), so no init runs; to
 * open, the tag travels in the same call; the tag of a seal is read with one prepared
 * parameter. The cipher sees the same IV, AAD, data and tag, so the bytes are the same;
 * kc_gcm_params_probe checks that on this process's OpenSSL at module init (seal and
 * open against the init path, a wrong tag refused) and only then sets kc_gcm_params;
 * otherwise the init path stays. ChaCha20-Poly1305 keeps the init (its provider takes
 * the nonce only there). */
extern int kc_gcm_params;

/* 1 if the parameter path seals and opens exactly as the init path on this OpenSSL. */
int kc_gcm_params_probe(void);

/* Set the nonce of an AEAD context keyed for its direction (and the tag to check when
 * tag is not NULL: an open); 0, or -1 with the reason in OpenSSL's error queue. */
static inline int
kc_aead_nonce(EVP_CIPHER_CTX *ctx, int gcm, int enc, const unsigned char *nonce,
              const unsigned char *tag)
{
#ifdef QF_OSSL_PARAMS
    if (gcm && kc_gcm_params) {
        OSSL_PARAM params[3] = {
            OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED, (void *)nonce,
                                    (size_t)-1),
            OSSL_PARAM_END,
            OSSL_PARAM_END,
        };
        if (tag != NULL) {
            params[1] = (OSSL_PARAM)OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG,
                                                            (void *)tag, TAG_LEN);
        }
        return EVP_CIPHER_CTX_set_params(ctx, params) == 1 ? 0 : -1;
    }
#endif
    if (enc) {
        return EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1 ? 0 : -1;
    }
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)tag) != 1) {
        return -1;
    }
    return 0;
}

/* The tag of the seal just finished, into tag[0:16]; 0 or -1. */
static inline int
kc_aead_tag(EVP_CIPHER_CTX *ctx, unsigned char *tag)
{
#ifdef QF_OSSL_PARAMS
    OSSL_PARAM params[2] = {
        OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_LEN),
        OSSL_PARAM_END,
    };
    return EVP_CIPHER_CTX_get_params(ctx, params) == 1 ? 0 : -1;
#else
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, tag) == 1 ? 0 : -1;
#endif
}

/* Encrypt data[0:len] in place, tag written at data[len:len+16]. */
static inline int
kc_seal(KeyContext *kc, uint64_t pn, const unsigned char *aad, int aad_len, unsigned char *data,
        int len)
{
    unsigned char nonce[IV_LEN];
    int outl;
    EVP_CIPHER_CTX *enc = kc_ctx(kc, KC_ENC);
    if (enc == NULL) {
        return -1;
    }
    make_nonce(kc->iv, pn, nonce);
    if (kc_aead_nonce(enc, !kc->chacha, 1, nonce, NULL) < 0 ||
        EVP_EncryptUpdate(enc, NULL, &outl, aad, aad_len) != 1) {
        return -1;
    }
    if (len > 0 && EVP_EncryptUpdate(enc, data, &outl, data, len) != 1) {
        return -1;
    }
    if (EVP_EncryptFinal_ex(enc, data + len, &outl) != 1 || kc_aead_tag(enc, data + len) < 0) {
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
    EVP_CIPHER_CTX *dec = kc_ctx(kc, KC_DEC);
    if (dec == NULL) {
        goto fail;
    }
    make_nonce(kc->iv, pn, nonce);
    if (len < 0 || kc_aead_nonce(dec, !kc->chacha, 0, nonce, ct + len) < 0 ||
        EVP_DecryptUpdate(dec, NULL, &outl, aad, aad_len) != 1) {
        goto fail;
    }
    if (len > 0 && EVP_DecryptUpdate(dec, out, &outl, ct, len) != 1) {
        goto fail;
    }
    if (EVP_DecryptFinal_ex(dec, out + len, &outl) != 1) {
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
    KeyContext *next;     /* or NULL: not made yet (cs_next) */
    KeyContext *previous; /* or NULL */
    int64_t largest_pn;
    int64_t phase_start_pn;
    int v2; /* QUIC version 2: "quicv2 ku/key/iv" labels for key updates */
} CidState;

extern PyTypeObject CidStateType;

/* The next phase's keys ("quic ku" generation of the current secret), made on first
 * need; NULL with an exception set. */
KeyContext *cs_next(CidState *self);

/* previous := current, current := next (cs_next); flip phase. 0, or -1 with an exception
 * set. */
int cs_rotate(CidState *self);

/* Seal the packet at p in place and protect its header (RFC 9001 5.3, 5.4): the header
 * is p[0:header_len] with the packet number in p[pn_offset:pn_offset+pn_len], the
 * payload of payload_len bytes follows, then 16 bytes for the tag; the sample lies 4
 * bytes after pn_offset (the caller checked it is inside). 0; -1 when the AEAD seal
 * failed, -2 when the mask did (OpenSSL's error queue holds why). */
static inline int
kc_seal_protect(KeyContext *kc, uint64_t pn, unsigned char *p, int header_len,
                int payload_len, Py_ssize_t pn_offset, int pn_len)
{
    unsigned char mask[5];
    int k;

    if (kc_seal(kc, pn, p, header_len, p + header_len, payload_len) < 0) {
        return -1;
    }
    if (kc_mask(kc, KC_HP, p + pn_offset + 4, mask) < 0) {
        return -2;
    }
    p[0] ^= mask[0] & ((p[0] & 0x80) ? 0x0F : 0x1F);
    for (k = 0; k < pn_len; k++) {
        p[pn_offset + k] ^= mask[1 + k];
    }
    return 0;
}

/* Seal one plaintext short-header packet in place: buf[offset:offset+header_len] is the
 * header (first byte given as `first`, key-phase bit already set; pn in its last pn_len
 * bytes), the payload of payload_len bytes follows, then 16 bytes for the tag. Applies
 * header protection and raises largest_pn. The caller has checked the bounds (pn_len +
 * payload_len >= 4, all inside buf). 0, or -1 with an exception set. */
static inline int
seal_one(CidState *state, unsigned char *buf, Py_ssize_t offset, int header_len,
         int payload_len, uint64_t pn, int pn_len, unsigned char first)
{
    int failed;

    buf[offset] = first;
    failed = kc_seal_protect(state->current, pn, buf + offset, header_len, payload_len,
                             header_len - pn_len, pn_len);
    if (failed) {
        openssl_error(failed == -1 ? "AEAD seal" : "header protection mask");
        return -1;
    }
    if ((int64_t)pn > state->largest_pn) {
        state->largest_pn = (int64_t)pn;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* opening one packet in two steps (batch.c open, coalesce.c open_run)                 */

/* RFC 9000 A.3 (same arithmetic as aead.decode_packet_number). */
static inline int64_t
decode_pn(int64_t truncated, int nbits, int64_t largest_pn)
{
    int64_t expected = largest_pn + 1;
    int64_t win = (int64_t)1 << nbits;
    int64_t hwin = win >> 1;
    int64_t candidate = (expected & ~(win - 1)) | truncated;
    if (candidate <= expected - hwin && candidate < PN_MAX - win) {
        return candidate + win;
    }
    if (candidate > expected + hwin && candidate >= win) {
        return candidate - win;
    }
    return candidate;
}

/* Header protection off a received packet (RFC 9001 5.4): src is its first byte, its
 * packet number starts at pn_offset and the sample 4 bytes later (the caller checked both
 * are inside the packet). Copies the header to hdr (room for pn_offset + 4 bytes) with
 * the first byte and the packet number unmasked; returns the header's length (pn_offset +
 * the pn length), or -1 with an exception set. *truncated: the packet number's bytes. */
static inline Py_ssize_t
kc_unprotect(KeyContext *kc, const unsigned char *src, Py_ssize_t pn_offset,
             unsigned char *hdr, int64_t *truncated)
{
    unsigned char mask[5], first;
    int pn_len, k;
    int64_t t = 0;

    if (kc_mask(kc, KC_HP_OPEN, src + pn_offset + 4, mask) < 0) {
        openssl_error("header protection mask");
        return -1;
    }
    first = src[0] ^ (mask[0] & ((src[0] & 0x80) ? 0x0F : 0x1F));
    pn_len = (first & 3) + 1;
    memcpy(hdr, src, (size_t)(pn_offset + pn_len));
    hdr[0] = first;
    for (k = 0; k < pn_len; k++) {
        hdr[pn_offset + k] ^= mask[1 + k];
        t = (t << 8) | hdr[pn_offset + k];
    }
    *truncated = t;
    return pn_offset + pn_len;
}

/* Header buffer on the stack for cids up to HDR_LOCAL - 5 bytes (longer: PyMem_Malloc). */
#define HDR_LOCAL 64

/* A packet whose header protection is removed, ready to decrypt. */
typedef struct {
    Py_ssize_t body;     /* offset of the ciphertext in buf */
    Py_ssize_t plen;     /* plaintext length (ciphertext minus tag) */
    int hdr_len;         /* unprotected header length (1 + cid + pn) */
    int phase;
    int rotate;          /* success must rotate to the next phase */
    int64_t pn;
    KeyContext *keys;
} OpenPrep;

/* Remove header protection of buf[offset:offset+length] into hdr (>= 1 + cid_len + 4
 * bytes), recover the pn and select keys. 0 = prepared, 1 = cannot be opened (too short,
 * long header, overruns buf), -1 = internal error with an exception set. */
static inline int
open_prepare(CidState *state, const unsigned char *buf, Py_ssize_t buf_len, Py_ssize_t offset,
             Py_ssize_t length, Py_ssize_t cid_len, unsigned char *hdr, OpenPrep *op)
{
    Py_ssize_t end = offset + length, pn_offset = offset + 1 + cid_len, sample_at, hlen;
    int64_t truncated;

    sample_at = pn_offset + 4;
    if (offset < 0 || length < 0 || end > buf_len || sample_at + SAMPLE_LEN > end ||
        (buf[offset] & 0x80) || length > INT_MAX) {
        return 1;
    }
    hlen = kc_unprotect(state->current, buf + offset, 1 + cid_len, hdr, &truncated);
    if (hlen < 0) {
        return -1;
    }
    op->hdr_len = (int)hlen;
    op->body = offset + hlen;
    op->plen = end - op->body - TAG_LEN;
    op->pn = decode_pn(truncated, (int)(hlen - 1 - cid_len) * 8, state->largest_pn);
    op->phase = (hdr[0] >> 2) & 1;
    op->rotate = 0;
    if (op->phase == state->key_phase) {
        op->keys = state->current;
    } else if (state->previous != NULL && op->pn < state->phase_start_pn) {
        op->keys = state->previous;
    } else {
        op->keys = cs_next(state);
        if (op->keys == NULL) {
            return -1;
        }
        op->rotate = 1;
    }
    return 0;
}

/* Decrypt a prepared packet into out (op->plen bytes) and, on success, rotate keys and
 * raise largest_pn. 0 = opened, 1 = bad tag (nothing changed), -1 = error (exception). */
static inline int
open_finish(CidState *state, const unsigned char *buf, const unsigned char *hdr,
            const OpenPrep *op, unsigned char *out)
{
    if (op->pn < 0 || kc_open(op->keys, (uint64_t)op->pn, hdr, op->hdr_len, buf + op->body,
                              (int)(op->plen + TAG_LEN), out) < 0) {
        return 1;
    }
    if (op->rotate) {
        if (cs_rotate(state) < 0) {
            return -1;
        }
        state->phase_start_pn = op->pn;
    }
    if (op->pn > state->largest_pn) {
        state->largest_pn = op->pn;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* descriptor helpers (batch.c)                                                       */

/* Unpack a descriptor of exactly n items; *owned receives a new reference to drop later. */
int unpack(PyObject *desc, Py_ssize_t n, PyObject **items, PyObject **owned);

/* The CidState of cid (borrowed), NULL if absent, NULL with TypeError if not a CidState. */
CidState *lookup(PyObject *table, PyObject *cid);

static inline int
as_ssize(PyObject *obj, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(obj);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* The cid lookup of an open loop, cached while descriptors repeat the same cid object. */
typedef struct {
    PyObject *last_cid; /* borrowed (kept alive by the descriptor sequence), or NULL */
    CidState *state;    /* borrowed entry of the cid, NULL when the cid is unknown */
    Py_ssize_t cid_len; /* its length (valid when state != NULL) */
} CidCache;

/* Unpack an open descriptor (offset, length, cid) into *offset, *length and cache->state /
 * cache->cid_len (state NULL: unknown cid). 0, or -1 with an exception set. */
static inline int
open_descriptor(PyObject *table, PyObject *desc, Py_ssize_t *offset, Py_ssize_t *length,
                CidCache *cache)
{
    PyObject *f[3], *owned;
    int rc = -1;

    if (unpack(desc, 3, f, &owned) < 0 || as_ssize(f[0], offset) < 0 ||
        as_ssize(f[1], length) < 0) {
        goto done;
    }
    if (f[2] != cache->last_cid || owned != NULL) {
        cache->state = lookup(table, f[2]);
        if (cache->state == NULL && PyErr_Occurred()) {
            goto done;
        }
        if (cache->state != NULL) {
            cache->cid_len =
                PyBytes_Check(f[2]) ? PyBytes_GET_SIZE(f[2]) : PyObject_Length(f[2]);
            if (cache->cid_len < 0) {
                goto done;
            }
        }
        /* a converted descriptor's cid dies with owned: do not cache it */
        cache->last_cid = owned == NULL ? f[2] : NULL;
    }
    rc = 0;
done:
    Py_XDECREF(owned);
    return rc;
}

/* ---------------------------------------------------------------------------------- */
/* module functions (batch.c, keys.c), registered in module.c                         */

/* The prologue of seal/open/open_run(table, buf, packets, ...): the argument count, the
 * table (a dict), the buffer (with `flags`) and the packet sequence. On success the
 * caller owns *view and *seq; on failure nothing is held and an exception is set. */
int batch_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected,
               const char *usage, int flags, PyObject **table, Py_buffer *view,
               PyObject **seq);
PyObject *mod_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_open_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_seal_stream_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* fields.c: the transport's plain-data fields read and written from C (the C twins of
 * Python code: bulk.c, ack.c, pacer.c, idle.c, sent.c). Reads return 0, QF_FALLBACK (not an exact int
 * within +-QF_FIELD_MAX, not an exact float or bool: the caller hands the call to the
 * Python code before anything changed) or -1 with an exception set. */
#define QF_FALLBACK 1
/* A read into `r` (an int of the caller): anything but 0 (QF_FALLBACK, or -1 with an
 * exception set) jumps to the caller's `unread` label, where nothing has changed yet. */
#define QF_READ(r, expr)                                                                  \
    do {                                                                                  \
        if (((r) = (expr)) != 0) {                                                        \
            goto unread;                                                                  \
        }                                                                                 \
    } while (0)
#define QF_FIELD_MAX (((long long)1 << 62) - 1) /* (QUIC varints; sums stay in 64 bits) */
#define QF_GRANULARITY 0.001 /* transport/rtt.py's GRANULARITY (RFC 9002 kGranularity) */
/* o.name (a new reference) / o.name = v: a plain slot of a slotted dataclass's object
 * at its cached offset, anything else by name (see fields.c) */
PyObject *qf_field_get(PyObject *o, PyObject *name);
int qf_field_set(PyObject *o, PyObject *name, PyObject *v);
PyObject *mod_field_slot(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_field_get(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_field_set(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int qf_get_obj(PyObject *o, PyObject *name, PyObject **out);
int qf_as_ll(PyObject *v, long long *out);
int qf_get_ll(PyObject *o, PyObject *name, long long *out);
int qf_get_float(PyObject *o, PyObject *name, double *out);
int qf_get_float_or_none(PyObject *o, PyObject *name, double *out, int *is_none);
int qf_get_bool(PyObject *o, PyObject *name, int *out);
int qf_get_exact_bool(PyObject *o, PyObject *name, int *out);
int qf_set_ll(PyObject *o, PyObject *name, long long v);
int qf_set_float(PyObject *o, PyObject *name, double v);
int qf_add_attr(PyObject *o, PyObject *name, long long k);
/* pacer.c: transport/congestion.py's Pacer for bulk.c (qf_pacer_setup interns its names) */
typedef struct {
    double multiplier, burst_interval, granularity, promised, tokens, last_time;
    int has_last;
    long long burst, mds, max_burst, run;
} QfPacer;
int qf_pacer_setup(void);
int qf_pacer_load(PyObject *pacer, QfPacer *p);
int qf_pacer_store(PyObject *pacer, const QfPacer *p);
double qf_pacer_rate(const QfPacer *p, double srtt, long long cwnd);
double qf_pacer_capacity(const QfPacer *p, double rate, long long cwnd);
double qf_pacer_refill(QfPacer *p, double now, double rate, double capacity);
int qf_pacer_run_budget(QfPacer *p, double now, double srtt, long long cwnd, long long want,
                        long long *room, double *later);
void qf_pacer_consume(QfPacer *p, double now, long long size, double srtt, long long cwnd);
/* bulk.c: transport/bulk.py's build_bulk_python in one call (see there) */
PyObject *mod_bulk_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_build_bulk(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* ack.c: LossDetection.on_ack_received's common case in one call (see there) */
PyObject *mod_ack_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_ack_received(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_ack_frame_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_ack_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* idle.c: idle.py's effective_idle_python in one call (see there) */
PyObject *mod_idle_setup(PyObject *module, PyObject *arg);
PyObject *mod_effective_idle(PyObject *module, PyObject *conn);
/* sent.c: send.py's on_packet_sent_python in one call (see there) */
PyObject *mod_sent_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_packet_sent(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_parse_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_push_short_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_parse_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* objects.c: objects of a slotted dataclass built without its generated __init__.
 * qf_layout_for fills *out with the slot offsets of cls's __slots__ (nfields -1 when cls
 * is not of the kind that allows it; -1 with an exception set on failure); qf_build
 * steals the n references in args (NULL entries: a failed allocation, then NULL with the
 * error set) and makes the object directly when layout->nfields == n, else calls cls. */
#define QF_MAX_FIELDS 10
typedef struct {
    Py_ssize_t nfields;
    Py_ssize_t offsets[QF_MAX_FIELDS];
} QfLayout;
int qf_layout_for(PyObject *cls, QfLayout *out);
PyObject *qf_build(PyObject *cls, const QfLayout *layout, PyObject **args, Py_ssize_t n);
/* frames.c: the frames of the n payload bytes at b (a new list), None (not the common
 * case: let the Python reference parse them) or NULL with an exception; classes: a tuple
 * checked by qf_frame_classes_ok (0 with TypeError set when it is not a 10-tuple). */
int qf_frame_classes_ok(PyObject *classes);
PyObject *qf_parse_frames(const uint8_t *b, Py_ssize_t n, PyObject *classes);
PyObject *mod_decode_tparams(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* hello.c: the common case of a ClientHello body */
PyObject *mod_parse_client_hello(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* hkdf.c: the TLS 1.3 key schedule's HKDF steps and the QUIC keys of a secret */
PyObject *mod_hkdf_extract(PyObject *module, PyObject *args);
PyObject *mod_hkdf_expand_label(PyObject *module, PyObject *args);
PyObject *mod_finished_verify_data(PyObject *module, PyObject *args);
PyObject *mod_quic_keys(PyObject *module, PyObject *args);
PyObject *mod_initial_keys(PyObject *module, PyObject *args);
PyObject *mod_initial_contexts(PyObject *module, PyObject *args);
/* ticket.c: a TLS server's NewSessionTicket, its ticket sealed (AES-256-GCM) */
PyObject *mod_ticket_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_address_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* hmac.c: a stateless reset token (the static key's HMAC state cached) */
PyObject *mod_reset_token(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_tls_server_flight(PyObject *module, PyObject *args);
/* plan.c: transport/inline.py's made functions as one C call (see there) */
PyObject *mod_object_plan(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int qf_plan_type_ready(void); /* (PyInit__native: the Plan type) */
/* segments.c: short_run (endpoint/segments.py's twin) and its Segments result: the count
 * of a Segments object and its dcid (borrowed), or -1 when obj is not one; its i-th entry */
PyObject *mod_short_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int qf_segments_ready(void);
Py_ssize_t qf_segments(PyObject *obj, PyObject **key);
void qf_segment_at(PyObject *obj, Py_ssize_t i, Py_ssize_t *offset, Py_ssize_t *length);
PyObject *mod_packet_key_context(PyObject *module, PyObject *args);

/* The QUIC variable-length integer (RFC 9000 16) at b[*pos] of the n bytes: 0 and *pos
 * moved past it, or -1 (nothing moved) when it runs past n.  Shared by the parsers of
 * header.c, frames.c and tparams.c. */
static inline int
qf_varint(const uint8_t *b, Py_ssize_t n, Py_ssize_t *pos, uint64_t *out)
{
    Py_ssize_t p = *pos;
    if (p >= n) {
        return -1;
    }
    Py_ssize_t len = (Py_ssize_t)1 << (b[p] >> 6);
    if (p + len > n) {
        return -1;
    }
    uint64_t v = b[p] & 0x3F;
    for (Py_ssize_t i = 1; i < len; i++) {
        v = (v << 8) | b[p + i];
    }
    *pos = p + len;
    *out = v;
    return 0;
}

/* The length of the shortest QUIC variable-length integer of v (< 2^62): 1, 2, 4 or 8. */
static inline int
qf_varint_len(uint64_t v)
{
    return v < 0x40 ? 1 : v < 0x4000 ? 2 : v < 0x40000000 ? 4 : 8;
}

/* v (< 2^62) as the shortest QUIC variable-length integer at b; its length. Shared by the
 * frame writers of ack.c, bulk.c and stream_run.c. */
static inline int
qf_put_varint(unsigned char *b, uint64_t v)
{
    int len = qf_varint_len(v);
    v |= (uint64_t)(len == 1 ? 0 : len == 2 ? 1 : len == 4 ? 2 : 3) << (8 * len - 2);
    for (int i = len - 1; i >= 0; i--) {
        b[i] = (unsigned char)v;
        v >>= 8;
    }
    return len;
}

#endif /* QUICFLOW_NATIVE_H */
