/*
 * quicflow.crypto._native -- hkdf: the TLS 1.3 key schedule's primitives (RFC 5869,
 * RFC 8446 7.1) and the QUIC packet keys of a secret (RFC 9001 5.1, RFC 9369 3.3.2),
 * each one C call for what the Python code does with several HMACs:
 *   hkdf_extract(suite, salt, ikm)                      -> PRK
 *   hkdf_expand_label(suite, secret, label, length[, context])
 *   finished_verify_data(suite, base_key, transcript_hash)
 *   quic_keys(suite, secret, v2, with_next)             -> (key, iv, hp[, ku, key', iv'])
 *   tls_server_flight(...)                             a TLS server's key schedule
 *   initial_keys(salt, dcid, v2)                       -> both directions' Initial keys
 * All lengths are at most one hash long (one HMAC block), as every TLS 1.3 / QUIC label
 * is; the pure-Python code in quicflow.crypto.hkdf is the bit-identical reference.
 */
/* (the HMAC and the running transcript hash these steps use are in hmac.c) */
#include "native.h"

/* HKDF-Expand-Label(secret, label, context, length) (one HMAC) */
static int
expand_label_ctx(const EVP_MD *md, const unsigned char *secret, size_t secret_len,
                 const char *label, size_t label_len, const unsigned char *context,
                 size_t context_len, int length, unsigned char *out)
{
    HmacKey k;
    int rc;
    hmac_key_init(&k, md, secret, secret_len);
    rc = expand_label_key(&k, label, label_len, context, context_len, length, out);
    hmac_key_wipe(&k);
    return rc;
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

/* The packet keys of a traffic secret, k being its keyed HMAC (RFC 9001 5.1: "quic key",
 * "quic iv", "quic hp"; "quicv2 ..." when v2): key and hp of key_len bytes, iv of IV_LEN;
 * hp NULL: not derived. -1 on an OpenSSL failure (no exception set). */
static int
packet_keys(const HmacKey *k, int v2, int key_len, unsigned char *key, unsigned char *iv,
            unsigned char *hp)
{
    if (expand_label_key(k, v2 ? "quicv2 key" : "quic key", v2 ? 10 : 8, NULL, 0, key_len,
                         key) < 0 ||
        expand_label_key(k, v2 ? "quicv2 iv" : "quic iv", v2 ? 9 : 7, NULL, 0, IV_LEN, iv) < 0 ||
        (hp != NULL &&
         expand_label_key(k, v2 ? "quicv2 hp" : "quic hp", v2 ? 9 : 7, NULL, 0, key_len, hp) <
             0)) {
        return -1;
    }
    return 0;
}

/* The client's and the server's Initial secrets of a client's first DCID (RFC 9001 5.2:
 * HKDF-Extract(salt, dcid), then "client in" / "server in"; SHA-256). -1 on an OpenSSL
 * failure (no exception set). */
static int
initial_secrets(const Py_buffer *salt, const Py_buffer *dcid, unsigned char secret[2][32])
{
    const EVP_MD *md = EVP_sha256();
    unsigned char initial[EVP_MAX_MD_SIZE];
    unsigned int initial_len = 0;
    int failed;

    failed = hmac_digest(md, salt->buf, (size_t)salt->len, dcid->buf, (size_t)dcid->len,
                         initial, &initial_len) < 0 ||
             expand_label_ctx(md, initial, initial_len, "client in", 9, NULL, 0, 32,
                              secret[0]) < 0 ||
             expand_label_ctx(md, initial, initial_len, "server in", 9, NULL, 0, 32,
                              secret[1]) < 0;
    OPENSSL_cleanse(initial, sizeof(initial));
    return failed ? -1 : 0;
}

/* A KeyContext with the packet keys of secret (a bytes object of the suite's hash length,
 * which it keeps); hp_given (not None) replaces the derived header-protection key. NULL
 * with an exception set. */
static KeyContext *
secret_key_context(long suite, const SuiteInfo *info, PyObject *secret, int v2,
                   PyObject *hp_given)
{
    HmacKey k = {0};
    unsigned char key[MAX_KEY_LEN], iv[IV_LEN], hp[MAX_KEY_LEN];
    PyObject *hp_bytes;
    KeyContext *result = NULL;

    hmac_key_init(&k, info->md(), (const unsigned char *)PyBytes_AS_STRING(secret),
                  (size_t)PyBytes_GET_SIZE(secret));
    if (packet_keys(&k, v2, info->key_len, key, iv, hp_given == Py_None ? hp : NULL) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HKDF-Expand-Label failed");
        goto wipe;
    }
    hp_bytes = hp_given != Py_None
                   ? Py_NewRef(hp_given)
                   : PyBytes_FromStringAndSize((const char *)hp, info->key_len);
    if (hp_bytes == NULL) {
        goto wipe;
    }
    result = kc_create(suite, key, iv, hp_bytes, secret);
    Py_DECREF(hp_bytes);
wipe:
    hmac_key_wipe(&k);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    OPENSSL_cleanse(hp, sizeof(hp));
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
    HmacKey k = {0}, kn = {0};
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*pp:quic_keys", &suite, &secret, &v2, &with_next)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    md = info.md();
    hmac_key_init(&k, md, secret.buf, (size_t)secret.len); /* one keyed HMAC, 3-4 labels */
    if (packet_keys(&k, v2, info.key_len, key, iv, hp) < 0 ||
        (with_next &&
         (expand_label_key(&k, v2 ? "quicv2 ku" : "quic ku", v2 ? 9 : 7, NULL, 0,
                           info.hash_len, ku) < 0 ||
          (hmac_key_init(&kn, md, ku, (size_t)info.hash_len), 0) ||
          packet_keys(&kn, v2, info.key_len, nkey, niv, NULL) < 0))) {
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
    hmac_key_wipe(&k);
    hmac_key_wipe(&kn);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(ku, sizeof(ku));
    OPENSSL_cleanse(nkey, sizeof(nkey));
done:
    PyBuffer_Release(&secret);
    return result;
}

/* ---------------------------------------------------------------------------------- */
/* a TLS 1.3 server's key schedule from the shared secret on, in one call            */

/* HMAC(HKDF-Expand-Label(base_key, "finished", "", hash_len), thash) (RFC 8446 4.4.4) */
static int
finished_mac(const EVP_MD *md, int hash_len, const unsigned char *base_key,
             const unsigned char *thash, unsigned char *out)
{
    unsigned char key[EVP_MAX_MD_SIZE];
    unsigned int out_len = 0;
    int rc = expand_label_ctx(md, base_key, (size_t)hash_len, "finished", 8, NULL, 0,
                              hash_len, key) < 0 ||
                     hmac_digest(md, key, (size_t)hash_len, thash, (size_t)hash_len, out,
                                 &out_len) < 0
                 ? -1
                 : 0;
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* The handshake step: from the hash state th holding transcript[:sh_len]
 * (ClientHello..ServerHello), the handshake secret, the master secret and the handshake
 * traffic secrets; th goes on with transcript[sh_len:] (..Certificate). RFC 8446 7.1.
 * derived: Derive-Secret(early_secret, "derived", ""); empty: the hash of no bytes. */
static int
server_handshake_step(const EVP_MD *md, int hl, RunningHash *th, const unsigned char *empty,
                      const unsigned char *derived, const unsigned char *shared,
                      size_t shared_len, const unsigned char *rest, size_t rest_len,
                      unsigned char *hs, unsigned char *master, unsigned char *c_hs,
                      unsigned char *s_hs)
{
    unsigned char h_sh[EVP_MAX_MD_SIZE], d2[EVP_MAX_MD_SIZE];
    unsigned char zeros[EVP_MAX_MD_SIZE] = {0};
    unsigned int n = 0;
    HmacKey k = {0};
    int rc = rh_peek(th, h_sh) < 0 || rh_update(th, rest, rest_len) < 0 ||
                     hmac_digest(md, derived, (size_t)hl, shared, shared_len, hs, &n) < 0 ||
                     (hmac_key_init(&k, md, hs, (size_t)hl), 0) ||
                     expand_label_key(&k, "c hs traffic", 12, h_sh, (size_t)hl, hl, c_hs) < 0 ||
                     expand_label_key(&k, "s hs traffic", 12, h_sh, (size_t)hl, hl, s_hs) < 0 ||
                     expand_label_key(&k, "derived", 7, empty, (size_t)hl, hl, d2) < 0 ||
                     hmac_digest(md, d2, (size_t)hl, zeros, (size_t)hl, master, &n) < 0
                 ? -1
                 : 0;
    hmac_key_wipe(&k);
    OPENSSL_cleanse(d2, sizeof(d2));
    return rc;
}

/* The Finished step: th holds the transcript up to the server's CertificateVerify
 * (..EncryptedExtensions when resuming). The server Finished MACs its hash; the
 * application secrets and the client Finished MAC take the hash up to the server
 * Finished (no client certificate in between). With with_ticket, the PSK of a
 * NewSessionTicket with nonce 0x00 from the resumption master secret, whose hash ends
 * with the client Finished that verifies (RFC 8446 4.4.4, 4.6.1, 7.1). s_fin and c_fin
 * get the 4-byte Finished message header, then the verify_data. */
static int
server_finished_step(const EVP_MD *md, int hl, RunningHash *th, const unsigned char *c_hs,
                     const unsigned char *s_hs, const unsigned char *master, int with_ticket,
                     unsigned char *s_fin, unsigned char *c_ap, unsigned char *s_ap,
                     unsigned char *c_fin, unsigned char *psk)
{
    static const unsigned char nonce0 = 0;
    unsigned char h[EVP_MAX_MD_SIZE], rms[EVP_MAX_MD_SIZE];
    HmacKey k = {0};
    int rc;
    hmac_key_init(&k, md, master, (size_t)hl); /* 2-3 labels of the master secret */
    s_fin[0] = c_fin[0] = 20; /* HandshakeType finished, u24 length */
    s_fin[1] = c_fin[1] = 0;
    s_fin[2] = c_fin[2] = 0;
    s_fin[3] = c_fin[3] = (unsigned char)hl;
    rc = rh_peek(th, h) < 0 || finished_mac(md, hl, s_hs, h, s_fin + 4) < 0 ||
                 rh_update(th, s_fin, (size_t)(4 + hl)) < 0 || rh_peek(th, h) < 0 ||
                 expand_label_key(&k, "c ap traffic", 12, h, (size_t)hl, hl, c_ap) < 0 ||
                 expand_label_key(&k, "s ap traffic", 12, h, (size_t)hl, hl, s_ap) < 0 ||
                 finished_mac(md, hl, c_hs, h, c_fin + 4) < 0 ||
                 (with_ticket &&
                  (rh_update(th, c_fin, (size_t)(4 + hl)) < 0 || rh_peek(th, h) < 0 ||
                   expand_label_key(&k, "res master", 10, h, (size_t)hl, hl, rms) < 0 ||
                   expand_label_ctx(md, rms, (size_t)hl, "resumption", 10, &nonce0, 1, hl,
                                    psk) < 0))
             ? -1
             : 0;
    hmac_key_wipe(&k);
    OPENSSL_cleanse(rms, sizeof(rms));
    return rc;
}

/* tls_server_flight(suite, derived, shared, transcript, sh_len, sign, with_ticket)
 *   -> (handshake_secret, master_secret, c_hs, s_hs, CertificateVerify message,
 *       server verify_data, c_ap, s_ap, client verify_data, ticket PSK or b"")
 * transcript: ClientHello..Certificate (..EncryptedExtensions when resuming), ServerHello
 * ending at sh_len. sign: None (resuming: no CertificateVerify, b"" in its place) or
 * sign(hash of transcript) -> the CertificateVerify message, which the Finished step's
 * hash takes after the transcript (transcript stays exported meanwhile: sign must not
 * resize it). One pass of the transcript hash for both steps (the two steps of
 * KeySchedule.server_flight). */
PyObject *
mod_tls_server_flight(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer derived, shared, transcript;
    Py_ssize_t sh_len;
    PyObject *sign, *cv = NULL;
    int with_ticket, failed;
    SuiteInfo info;
    const EVP_MD *md;
    RunningHash th = {0};
    unsigned char hs[EVP_MAX_MD_SIZE], master[EVP_MAX_MD_SIZE];
    unsigned char c_hs[EVP_MAX_MD_SIZE], s_hs[EVP_MAX_MD_SIZE], h_cert[EVP_MAX_MD_SIZE];
    unsigned char empty[EVP_MAX_MD_SIZE];
    unsigned char s_fin[4 + EVP_MAX_MD_SIZE], c_fin[4 + EVP_MAX_MD_SIZE];
    unsigned char c_ap[EVP_MAX_MD_SIZE], s_ap[EVP_MAX_MD_SIZE], psk[EVP_MAX_MD_SIZE];
    int hl;
    PyObject *result = NULL;

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*y*y*nOp:tls_server_flight", &suite, &derived, &shared,
                          &transcript, &sh_len, &sign, &with_ticket)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        goto done;
    }
    md = info.md();
    hl = info.hash_len;
    if (derived.len != hl || sh_len < 0 || sh_len > transcript.len) {
        PyErr_SetString(PyExc_ValueError, "tls_server_flight: bad lengths");
        goto done;
    }
    if (sign != Py_None && !PyCallable_Check(sign)) {
        PyErr_SetString(PyExc_TypeError, "tls_server_flight: sign must be callable or None");
        goto done;
    }
    if (rh_init(&th, md) < 0 || rh_peek(&th, empty) < 0 ||
        rh_update(&th, transcript.buf, (size_t)sh_len) < 0 ||
        server_handshake_step(md, hl, &th, empty, derived.buf, shared.buf, (size_t)shared.len,
                              (const unsigned char *)transcript.buf + sh_len,
                              (size_t)(transcript.len - sh_len), hs, master, c_hs,
                              s_hs) < 0 ||
        rh_peek(&th, h_cert) < 0) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: TLS handshake key schedule failed");
        goto wipe;
    }
    if (sign == Py_None) {
        cv = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        PyObject *h = PyBytes_FromStringAndSize((const char *)h_cert, hl);
        cv = h == NULL ? NULL : PyObject_CallOneArg(sign, h);
        Py_XDECREF(h);
        if (cv != NULL && !PyBytes_Check(cv)) {
            PyErr_SetString(PyExc_TypeError, "tls_server_flight: sign must return bytes");
            Py_CLEAR(cv);
        }
    }
    if (cv == NULL) {
        goto wipe;
    }
    failed = rh_update(&th, PyBytes_AS_STRING(cv), (size_t)PyBytes_GET_SIZE(cv)) < 0 ||
             server_finished_step(md, hl, &th, c_hs, s_hs, master, with_ticket, s_fin, c_ap,
                                  s_ap, c_fin, psk) < 0;
    if (failed) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: TLS Finished key schedule failed");
        goto wipe;
    }
    result = Py_BuildValue("(y#y#y#y#Oy#y#y#y#y#)", hs, (Py_ssize_t)hl, master,
                           (Py_ssize_t)hl, c_hs, (Py_ssize_t)hl, s_hs, (Py_ssize_t)hl, cv,
                           s_fin + 4, (Py_ssize_t)hl, c_ap, (Py_ssize_t)hl, s_ap,
                           (Py_ssize_t)hl, c_fin + 4, (Py_ssize_t)hl, psk,
                           (Py_ssize_t)(with_ticket ? hl : 0));
wipe:
    Py_XDECREF(cv);
    rh_free(&th);
    OPENSSL_cleanse(hs, sizeof(hs));
    OPENSSL_cleanse(master, sizeof(master));
    OPENSSL_cleanse(c_hs, sizeof(c_hs));
    OPENSSL_cleanse(s_hs, sizeof(s_hs));
    OPENSSL_cleanse(c_ap, sizeof(c_ap));
    OPENSSL_cleanse(s_ap, sizeof(s_ap));
    OPENSSL_cleanse(psk, sizeof(psk));
    OPENSSL_cleanse(c_fin, sizeof(c_fin));
    OPENSSL_cleanse(s_fin, sizeof(s_fin));
done:
    PyBuffer_Release(&derived);
    PyBuffer_Release(&shared);
    PyBuffer_Release(&transcript);
    return result;
}

/* packet_key_context(suite, secret, v2[, hp_key]) -> KeyContext: the packet keys of a
 * traffic secret ("quic key", "quic iv", "quic hp"; "quicv2 ..." when v2) in a
 * KeyContext that keeps the secret, in one call (what quic_keys + KeyContext do in two);
 * hp_key, when given and not None, replaces the derived header-protection key (it stays
 * the same across key updates). */
PyObject *
mod_packet_key_context(PyObject *module, PyObject *args)
{
    long suite;
    PyObject *secret, *hp_given = Py_None;
    int v2;
    SuiteInfo info;

    (void)module;
    if (!PyArg_ParseTuple(args, "lSp|O:packet_key_context", &suite, &secret, &v2, &hp_given)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        return NULL;
    }
    if (PyBytes_GET_SIZE(secret) != info.hash_len) {
        PyErr_Format(PyExc_ValueError, "secret must be %d bytes", info.hash_len);
        return NULL;
    }
    if (hp_given != Py_None) {
        if (!PyBytes_Check(hp_given) || PyBytes_GET_SIZE(hp_given) != info.key_len) {
            PyErr_Format(PyExc_ValueError, "header protection key must be %d bytes",
                         info.key_len);
            return NULL;
        }
    }
    return (PyObject *)secret_key_context(suite, &info, secret, v2, hp_given);
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
    unsigned char secret[2][32], key[2][16], iv[2][IV_LEN], hp[2][16];
    HmacKey k = {0};
    PyObject *result = NULL;
    int i;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*p:initial_keys", &salt, &dcid, &v2)) {
        return NULL;
    }
    if (initial_secrets(&salt, &dcid, secret) < 0) {
        goto fail;
    }
    for (i = 0; i < 2; i++) {
        int bad;
        hmac_key_init(&k, EVP_sha256(), secret[i], sizeof(secret[i])); /* 3 labels */
        bad = packet_keys(&k, v2, 16, key[i], iv[i], hp[i]) < 0;
        hmac_key_wipe(&k);
        if (bad) {
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
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    OPENSSL_cleanse(hp, sizeof(hp));
    PyBuffer_Release(&salt);
    PyBuffer_Release(&dcid);
    return result;
}

/* initial_contexts(salt, dcid, v2) -> (client KeyContext, server KeyContext)
 * initial_keys' derivation (RFC 9001 5.2) with each direction's packet keys put straight
 * into a KeyContext that keeps its secret (what packet_key_context gives for that
 * secret): the Initial protectors of a new connection in one call. */
PyObject *
mod_initial_contexts(PyObject *module, PyObject *args)
{
    Py_buffer salt, dcid;
    int v2;
    unsigned char secret[2][32];
    SuiteInfo info;
    PyObject *contexts[2] = {NULL, NULL}, *result = NULL;
    int i;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*p:initial_contexts", &salt, &dcid, &v2)) {
        return NULL;
    }
    if (suite_info(SUITE_AES128, &info) < 0) {
        goto wipe;
    }
    if (initial_secrets(&salt, &dcid, secret) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: Initial key derivation failed");
        goto wipe;
    }
    for (i = 0; i < 2; i++) {
        PyObject *secret_bytes = PyBytes_FromStringAndSize((const char *)secret[i], 32);
        if (secret_bytes == NULL) {
            goto wipe;
        }
        contexts[i] = (PyObject *)secret_key_context(SUITE_AES128, &info, secret_bytes, v2,
                                                     Py_None);
        Py_DECREF(secret_bytes);
        if (contexts[i] == NULL) {
            goto wipe;
        }
    }
    result = PyTuple_Pack(2, contexts[0], contexts[1]);
wipe:
    Py_XDECREF(contexts[0]);
    Py_XDECREF(contexts[1]);
    OPENSSL_cleanse(secret, sizeof(secret));
    PyBuffer_Release(&salt);
    PyBuffer_Release(&dcid);
    return result;
}
