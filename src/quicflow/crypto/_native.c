/*
 * quicflow.crypto._native: batch QUIC 1-RTT packet protection on OpenSSL's libcrypto.
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
/* suites                                                                             */

typedef struct {
    int key_len;
    int hash_len;
    int chacha;
    const EVP_CIPHER *(*aead)(void);
    const EVP_CIPHER *(*hp)(void);
    const EVP_MD *(*md)(void);
} SuiteInfo;

static int
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

static PyObject *
openssl_error(const char *what)
{
    unsigned long code = ERR_get_error();
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    ERR_clear_error();
    PyErr_Format(PyExc_RuntimeError, "OpenSSL: %s failed (%s)", what, text);
    return NULL;
}

/* HKDF-Expand-Label (RFC 8446 7.1) with an empty context, length <= hash length:
 * a single HMAC block T(1) = HMAC(secret, HkdfLabel || 0x01). */
static int
hkdf_expand_label_raw(const EVP_MD *md, const unsigned char *secret, int secret_len,
                      const char *label, int length, unsigned char *out)
{
    unsigned char info[2 + 1 + 255 + 1 + 1];
    unsigned char block[EVP_MAX_MD_SIZE];
    unsigned int block_len = 0;
    size_t label_len = strlen(label);
    size_t n = 0;
    if (length < 0 || length > EVP_MD_get_size(md) || label_len + 6 > 255) {
        return -1;
    }
    info[n++] = (unsigned char)(length >> 8);
    info[n++] = (unsigned char)length;
    info[n++] = (unsigned char)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = 0; /* empty context */
    info[n++] = 1; /* block counter */
    if (HMAC(md, secret, secret_len, info, n, block, &block_len) == NULL) {
        ERR_clear_error();
        return -1;
    }
    memcpy(out, block, (size_t)length);
    OPENSSL_cleanse(block, sizeof(block));
    return 0;
}

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

/* ---------------------------------------------------------------------------------- */
/* KeyContext                                                                         */

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

static PyTypeObject KeyContextType;

static void
kc_dealloc(KeyContext *self)
{
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    EVP_CIPHER_CTX_free(self->hp);
    OPENSSL_cleanse(self->iv, sizeof(self->iv));
    Py_XDECREF(self->hp_key);
    Py_XDECREF(self->secret);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* New reference; key/iv/hp_key lengths must already be checked. */
static KeyContext *
kc_create(long suite, const unsigned char *key, const unsigned char *iv, PyObject *hp_key,
          PyObject *secret)
{
    SuiteInfo info;
    static const unsigned char zero16[16] = {0};
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
    memcpy(self->iv, iv, IV_LEN);
    Py_INCREF(hp_key);
    self->hp_key = hp_key;
    Py_INCREF(secret);
    self->secret = secret;
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    self->hp = EVP_CIPHER_CTX_new();
    if (self->enc == NULL || self->dec == NULL || self->hp == NULL) {
        Py_DECREF(self);
        PyErr_NoMemory();
        return NULL;
    }
    if (EVP_EncryptInit_ex(self->enc, info.aead(), NULL, key, NULL) != 1 ||
        EVP_DecryptInit_ex(self->dec, info.aead(), NULL, key, NULL) != 1) {
        Py_DECREF(self);
        return (KeyContext *)openssl_error("AEAD key setup");
    }
    if (info.chacha) {
        if (EVP_EncryptInit_ex(self->hp, info.hp(), NULL, hp, zero16) != 1) {
            Py_DECREF(self);
            return (KeyContext *)openssl_error("ChaCha20 header protection setup");
        }
    } else {
        if (EVP_EncryptInit_ex(self->hp, info.hp(), NULL, hp, NULL) != 1 ||
            EVP_CIPHER_CTX_set_padding(self->hp, 0) != 1) {
            Py_DECREF(self);
            return (KeyContext *)openssl_error("AES-ECB header protection setup");
        }
    }
    return self;
}

static int
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
    if (kc_mask(self, sample.buf, mask) < 0) {
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

static PyMethodDef kc_methods[] = {
    {"mask", (PyCFunction)kc_mask_py, METH_O, "5-byte header protection mask of a sample"},
    {NULL},
};

static PyTypeObject KeyContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quicflow.crypto._native.KeyContext",
    .tp_basicsize = sizeof(KeyContext),
    .tp_dealloc = (destructor)kc_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyContext(suite, key, iv, hp_key, secret=None): one key generation",
    .tp_getset = kc_getset,
    .tp_methods = kc_methods,
    .tp_new = kc_new,
};

/* ---------------------------------------------------------------------------------- */
/* CidState                                                                           */

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

static PyTypeObject CidStateType;

static void
cs_dealloc(CidState *self)
{
    Py_XDECREF(self->suite);
    Py_XDECREF(self->hp_key);
    Py_XDECREF(self->current);
    Py_XDECREF(self->next);
    Py_XDECREF(self->previous);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
cs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"suite", "hp_key", "key_phase", "current", "next", "largest_pn",
                             NULL};
    PyObject *suite, *hp_key;
    int key_phase;
    KeyContext *current, *next;
    long long largest_pn;
    long suite_id;
    CidState *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OSiO!O!L:CidState", kwlist, &suite, &hp_key,
                                     &key_phase, &KeyContextType, &current, &KeyContextType,
                                     &next, &largest_pn)) {
        return NULL;
    }
    suite_id = PyLong_AsLong(suite);
    if (suite_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (current->suite != suite_id || next->suite != suite_id) {
        PyErr_SetString(PyExc_ValueError, "key contexts of another suite");
        return NULL;
    }
    if (current->secret == Py_None || next->secret == Py_None) {
        PyErr_SetString(PyExc_ValueError, "key contexts need their secrets (for key updates)");
        return NULL;
    }
    if (largest_pn < -1 || largest_pn >= PN_MAX) {
        PyErr_SetString(PyExc_ValueError, "largest_pn must be in -1 .. 2**62-1");
        return NULL;
    }
    self = (CidState *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->suite_id = suite_id;
    self->suite = Py_NewRef(suite);
    self->hp_key = Py_NewRef(hp_key);
    self->key_phase = key_phase & 1;
    self->current = (KeyContext *)Py_NewRef(current);
    self->next = (KeyContext *)Py_NewRef(next);
    self->previous = NULL;
    self->largest_pn = largest_pn;
    self->phase_start_pn = largest_pn + 1;
    return (PyObject *)self;
}

/* previous := current, current := next, next := "quic ku" generation of it; flip phase. */
static int
cs_rotate(CidState *self)
{
    SuiteInfo info;
    unsigned char ku[MAX_HASH_LEN], key[MAX_KEY_LEN], iv[IV_LEN];
    const EVP_MD *md;
    PyObject *ku_bytes;
    KeyContext *fresh;
    PyObject *secret = self->next->secret;

    if (suite_info(self->suite_id, &info) < 0) {
        return -1;
    }
    md = info.md();
    if (hkdf_expand_label_raw(md, (const unsigned char *)PyBytes_AS_STRING(secret),
                              (int)PyBytes_GET_SIZE(secret), "quic ku", info.hash_len,
                              ku) < 0 ||
        hkdf_expand_label_raw(md, ku, info.hash_len, "quic key", info.key_len, key) < 0 ||
        hkdf_expand_label_raw(md, ku, info.hash_len, "quic iv", IV_LEN, iv) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HKDF-Expand-Label failed");
        return -1;
    }
    ku_bytes = PyBytes_FromStringAndSize((const char *)ku, info.hash_len);
    OPENSSL_cleanse(ku, sizeof(ku));
    if (ku_bytes == NULL) {
        return -1;
    }
    fresh = kc_create(self->suite_id, key, iv, self->hp_key, ku_bytes);
    OPENSSL_cleanse(key, sizeof(key));
    Py_DECREF(ku_bytes);
    if (fresh == NULL) {
        return -1;
    }
    Py_XSETREF(self->previous, self->current);
    self->current = self->next;
    self->next = fresh;
    self->key_phase ^= 1;
    return 0;
}

static PyObject *
cs_update(CidState *self, PyObject *unused)
{
    (void)unused;
    if (cs_rotate(self) < 0) {
        return NULL;
    }
    self->phase_start_pn = self->largest_pn + 1;
    Py_RETURN_NONE;
}

static PyObject *
cs_get_obj(CidState *self, void *closure)
{
    PyObject *value = *(PyObject **)((char *)self + (Py_ssize_t)closure);
    return Py_NewRef(value ? value : Py_None);
}

static PyObject *
cs_get_key_phase(CidState *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->key_phase);
}

static PyObject *
cs_get_largest_pn(CidState *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->largest_pn);
}

static PyObject *
cs_get_phase_start_pn(CidState *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->phase_start_pn);
}

#define CS_OFF(field) ((void *)offsetof(CidState, field))

static PyGetSetDef cs_getset[] = {
    {"suite", (getter)cs_get_obj, NULL, "cipher suite", CS_OFF(suite)},
    {"hp_key", (getter)cs_get_obj, NULL, "header protection key", CS_OFF(hp_key)},
    {"current", (getter)cs_get_obj, NULL, "KeyContext of the current phase", CS_OFF(current)},
    {"next", (getter)cs_get_obj, NULL, "KeyContext of the next phase", CS_OFF(next)},
    {"previous", (getter)cs_get_obj, NULL, "KeyContext of the previous phase or None",
     CS_OFF(previous)},
    {"key_phase", (getter)cs_get_key_phase, NULL, "current key phase bit", NULL},
    {"largest_pn", (getter)cs_get_largest_pn, NULL, "largest packet number", NULL},
    {"phase_start_pn", (getter)cs_get_phase_start_pn, NULL, "first pn of the current phase",
     NULL},
    {NULL},
};

static PyMethodDef cs_methods[] = {
    {"update", (PyCFunction)cs_update, METH_NOARGS,
     "key update: rotate to the next generation, flip the key phase"},
    {NULL},
};

static PyTypeObject CidStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quicflow.crypto._native.CidState",
    .tp_basicsize = sizeof(CidState),
    .tp_dealloc = (destructor)cs_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CidState(suite, hp_key, key_phase, current, next, largest_pn): table entry",
    .tp_getset = cs_getset,
    .tp_methods = cs_methods,
    .tp_new = cs_new,
};

/* ---------------------------------------------------------------------------------- */
/* batches                                                                            */

/* Unpack a descriptor of exactly n items; *owned receives a new reference to drop later. */
static int
unpack(PyObject *desc, Py_ssize_t n, PyObject **items, PyObject **owned)
{
    Py_ssize_t i;
    PyObject *tup = desc;
    *owned = NULL;
    if (!PyTuple_CheckExact(desc)) {
        tup = PySequence_Tuple(desc);
        if (tup == NULL) {
            return -1;
        }
        *owned = tup;
    }
    if (PyTuple_GET_SIZE(tup) != n) {
        PyErr_Format(PyExc_ValueError, "packet descriptor must have %zd items, not %zd", n,
                     PyTuple_GET_SIZE(tup));
        return -1;
    }
    for (i = 0; i < n; i++) {
        items[i] = PyTuple_GET_ITEM(tup, i);
    }
    return 0;
}

static inline int
as_ssize(PyObject *obj, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(obj);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static CidState *
lookup(PyObject *table, PyObject *cid)
{
    PyObject *state = PyDict_GetItemWithError(table, cid);
    if (state != NULL && !Py_IS_TYPE(state, &CidStateType)) {
        PyErr_SetString(PyExc_TypeError, "offload table entry is not a CidState");
        return NULL;
    }
    return (CidState *)state;
}

static PyObject *
mod_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *seq = NULL, *last_cid = NULL;
    CidState *state = NULL;
    Py_buffer view = {0};
    Py_ssize_t n, i;
    unsigned char *buf;

    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "seal(table, buf, packets)");
        return NULL;
    }
    table = args[0];
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "table must be a dict");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    seq = PySequence_Fast(args[2], "packets must be a sequence");
    if (seq == NULL) {
        goto error;
    }
    buf = view.buf;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        PyObject *f[5], *owned;
        Py_ssize_t offset, header_len, payload_len, body, end, pn_offset, sample_at;
        unsigned long long pn;
        unsigned char first, mask[5];
        int pn_len, k;

        if (unpack(PySequence_Fast_GET_ITEM(seq, i), 5, f, &owned) < 0) {
            Py_XDECREF(owned);
            goto error;
        }
        if (as_ssize(f[0], &offset) < 0 || as_ssize(f[1], &header_len) < 0 ||
            as_ssize(f[2], &payload_len) < 0) {
            Py_XDECREF(owned);
            goto error;
        }
        pn = PyLong_AsUnsignedLongLong(f[3]);
        if (pn == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_XDECREF(owned);
            goto error;
        }
        if (f[4] != last_cid) {
            state = lookup(table, f[4]);
            if (state == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, f[4]);
                }
                Py_XDECREF(owned);
                goto error;
            }
            last_cid = f[4]; /* kept alive by seq (or by owned, dropped below: reset) */
            if (owned != NULL) {
                last_cid = NULL;
            }
        }
        Py_XDECREF(owned);
        if (pn >= (unsigned long long)PN_MAX) {
            PyErr_SetString(PyExc_OverflowError, "packet number must be below 2**62");
            goto error;
        }
        if (offset >= view.len) { /* like buf[offset] in the Python engine */
            PyErr_SetString(PyExc_IndexError, "bytearray index out of range");
            goto error;
        }
        if (offset < 0 || header_len < 2 || header_len > view.len ||
            payload_len < 0 || payload_len > view.len) {
            PyErr_SetString(PyExc_ValueError,
                            "packet too short for header protection, or overruns buf");
            goto error;
        }
        first = (unsigned char)((buf[offset] & 0xFB) | (state->key_phase << 2));
        buf[offset] = first;
        pn_len = (first & 3) + 1;
        body = offset + header_len;
        end = body + payload_len + TAG_LEN;
        pn_offset = body - pn_len;
        sample_at = pn_offset + 4;
        if (sample_at + SAMPLE_LEN > end || end > view.len || pn_offset <= offset ||
            payload_len > INT_MAX - TAG_LEN) {
            PyErr_SetString(PyExc_ValueError,
                            "packet too short for header protection, or overruns buf");
            goto error;
        }
        if (kc_seal(state->current, pn, buf + offset, (int)header_len, buf + body,
                    (int)payload_len) < 0) {
            openssl_error("AEAD seal");
            goto error;
        }
        if (kc_mask(state->current, buf + sample_at, mask) < 0) {
            openssl_error("header protection mask");
            goto error;
        }
        buf[offset] = first ^ (mask[0] & 0x1F);
        for (k = 0; k < pn_len; k++) {
            buf[pn_offset + k] ^= mask[1 + k];
        }
        if ((int64_t)pn > state->largest_pn) {
            state->largest_pn = (int64_t)pn;
        }
    }
    Py_DECREF(seq);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
error:
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
make_result(PyTypeObject *rtype, int64_t pn, PyObject *header, PyObject *payload, int phase,
            int changed)
{
    PyObject *r, *pn_obj = PyLong_FromLongLong(pn);
    if (pn_obj == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX < 0x030E0000
    /* A NamedTuple: a tuple subclass without __dict__; fill it like tuple_subtype_new. */
    if (rtype != NULL && rtype->tp_basicsize == PyTuple_Type.tp_basicsize) {
        r = rtype->tp_alloc(rtype, 5);
    } else
#endif
    {
        r = PyTuple_New(5);
    }
    if (r == NULL) {
        Py_DECREF(pn_obj);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, pn_obj);
    PyTuple_SET_ITEM(r, 1, Py_NewRef(header));
    PyTuple_SET_ITEM(r, 2, Py_NewRef(payload));
    PyTuple_SET_ITEM(r, 3, PyLong_FromLong(phase)); /* small ints: cannot fail */
    PyTuple_SET_ITEM(r, 4, Py_NewRef(changed ? Py_True : Py_False));
#if PY_VERSION_HEX >= 0x030E0000
    if (rtype != NULL) {
        PyObject *args = PyTuple_Pack(1, r);
        Py_DECREF(r);
        if (args == NULL) {
            return NULL;
        }
        r = PyTuple_Type.tp_new(rtype, args, NULL);
        Py_DECREF(args);
    }
#endif
    return r;
}

/* Open one packet; new reference to a result, Py_None (borrowed semantics: new ref) on a
 * failure, NULL with an exception on an internal error. */
static PyObject *
open_one(CidState *state, const unsigned char *buf, Py_ssize_t buf_len, Py_ssize_t offset,
         Py_ssize_t length, Py_ssize_t cid_len, PyTypeObject *rtype)
{
    Py_ssize_t end = offset + length, pn_offset = offset + 1 + cid_len, sample_at, body;
    unsigned char mask[5], first, *hdr;
    int pn_len, phase, rotate = 0, k;
    int64_t truncated = 0, pn;
    KeyContext *keys;
    PyObject *header, *payload, *result;

    sample_at = pn_offset + 4;
    if (offset < 0 || length < 0 || end > buf_len || sample_at + SAMPLE_LEN > end ||
        (buf[offset] & 0x80) || length > INT_MAX) {
        Py_RETURN_NONE;
    }
    if (kc_mask(state->current, buf + sample_at, mask) < 0) {
        return openssl_error("header protection mask");
    }
    first = buf[offset] ^ (mask[0] & 0x1F);
    pn_len = (first & 3) + 1;
    body = pn_offset + pn_len;
    header = PyBytes_FromStringAndSize((const char *)buf + offset, body - offset);
    if (header == NULL) {
        return NULL;
    }
    hdr = (unsigned char *)PyBytes_AS_STRING(header);
    hdr[0] = first;
    for (k = 0; k < pn_len; k++) {
        unsigned char byte = hdr[1 + cid_len + k] ^ mask[1 + k];
        hdr[1 + cid_len + k] = byte;
        truncated = (truncated << 8) | byte;
    }
    pn = decode_pn(truncated, pn_len * 8, state->largest_pn);
    phase = (first >> 2) & 1;
    if (phase == state->key_phase) {
        keys = state->current;
    } else if (state->previous != NULL && pn < state->phase_start_pn) {
        keys = state->previous;
    } else {
        keys = state->next;
        rotate = 1;
    }
    payload = PyBytes_FromStringAndSize(NULL, end - body - TAG_LEN);
    if (payload == NULL) {
        Py_DECREF(header);
        return NULL;
    }
    if (pn < 0 ||
        kc_open(keys, (uint64_t)pn, hdr, (int)(body - offset), buf + body, (int)(end - body),
                (unsigned char *)PyBytes_AS_STRING(payload)) < 0) {
        Py_DECREF(header);
        Py_DECREF(payload);
        Py_RETURN_NONE;
    }
    if (rotate) {
        if (cs_rotate(state) < 0) {
            Py_DECREF(header);
            Py_DECREF(payload);
            return NULL;
        }
        state->phase_start_pn = pn;
    }
    if (pn > state->largest_pn) {
        state->largest_pn = pn;
    }
    result = make_result(rtype, pn, header, payload, phase, rotate);
    Py_DECREF(header);
    Py_DECREF(payload);
    return result;
}

static PyObject *
mod_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *seq = NULL, *results = NULL, *last_cid = NULL, *out;
    PyTypeObject *rtype = NULL;
    CidState *state = NULL;
    Py_buffer view = {0};
    Py_ssize_t n, i, failures = 0, cid_len = 0;

    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "open(table, buf, packets, result_type)");
        return NULL;
    }
    table = args[0];
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "table must be a dict");
        return NULL;
    }
    if (args[3] != Py_None) {
        if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "result_type must be a tuple subclass or None");
            return NULL;
        }
        rtype = (PyTypeObject *)args[3];
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    seq = PySequence_Fast(args[2], "packets must be a sequence");
    if (seq == NULL) {
        goto error;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    results = PyList_New(n);
    if (results == NULL) {
        goto error;
    }
    for (i = 0; i < n; i++) {
        PyObject *f[3], *owned, *r;
        Py_ssize_t offset, length;

        if (unpack(PySequence_Fast_GET_ITEM(seq, i), 3, f, &owned) < 0) {
            Py_XDECREF(owned);
            goto error;
        }
        if (as_ssize(f[0], &offset) < 0 || as_ssize(f[1], &length) < 0) {
            Py_XDECREF(owned);
            goto error;
        }
        if (f[2] != last_cid || owned != NULL) {
            state = lookup(table, f[2]);
            if (state == NULL && PyErr_Occurred()) {
                Py_XDECREF(owned);
                goto error;
            }
            if (state != NULL) {
                cid_len = PyBytes_Check(f[2]) ? PyBytes_GET_SIZE(f[2]) : PyObject_Length(f[2]);
                if (cid_len < 0) {
                    Py_XDECREF(owned);
                    goto error;
                }
            }
            last_cid = owned == NULL ? f[2] : NULL;
        }
        Py_XDECREF(owned);
        if (state == NULL) {
            failures++;
            PyList_SET_ITEM(results, i, Py_NewRef(Py_None));
            continue;
        }
        r = open_one(state, view.buf, view.len, offset, length, cid_len, rtype);
        if (r == NULL) {
            goto error;
        }
        if (r == Py_None) {
            failures++;
        }
        PyList_SET_ITEM(results, i, r);
    }
    Py_DECREF(seq);
    PyBuffer_Release(&view);
    out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(results);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, results);
    PyTuple_SET_ITEM(out, 1, PyLong_FromSsize_t(failures));
    return out;
error:
    Py_XDECREF(results);
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
mod_hkdf_expand_label(PyObject *module, PyObject *args)
{
    long suite;
    Py_buffer secret;
    const char *label;
    int length;
    SuiteInfo info;
    unsigned char out[EVP_MAX_MD_SIZE];

    (void)module;
    if (!PyArg_ParseTuple(args, "ly*si:hkdf_expand_label", &suite, &secret, &label, &length)) {
        return NULL;
    }
    if (suite_info(suite, &info) < 0) {
        PyBuffer_Release(&secret);
        return NULL;
    }
    if (secret.len > INT_MAX ||
        hkdf_expand_label_raw(info.md(), secret.buf, (int)secret.len, label, length, out) < 0) {
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "HKDF-Expand-Label failed (length > hash length?)");
        return NULL;
    }
    PyBuffer_Release(&secret);
    return PyBytes_FromStringAndSize((const char *)out, length);
}

static PyMethodDef module_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))mod_seal, METH_FASTCALL,
     "seal(table, buf, packets): seal (offset, header_len, payload_len, pn, cid) in place"},
    {"open", (PyCFunction)(void (*)(void))mod_open, METH_FASTCALL,
     "open(table, buf, packets, result_type) -> (results, failures)"},
    {"hkdf_expand_label", mod_hkdf_expand_label, METH_VARARGS,
     "hkdf_expand_label(suite, secret, label, length) -> bytes (empty context)"},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quicflow.crypto._native",
    .m_doc = "Batch QUIC packet protection on OpenSSL libcrypto",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m;
    if (PyType_Ready(&KeyContextType) < 0 || PyType_Ready(&CidStateType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "KeyContext", (PyObject *)&KeyContextType) < 0 ||
        PyModule_AddObjectRef(m, "CidState", (PyObject *)&CidStateType) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) <
            0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
