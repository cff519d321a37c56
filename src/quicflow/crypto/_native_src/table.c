/*
 * quicflow.crypto._native -- table: the CidState type, one entry of the offload table
 * (a dict cid -> CidState owned by native.py, which installs, aliases, updates and removes
 * entries; aliases of a connection share one CidState), mirroring offload.CidKeyState:
 * suite, header-protection key, key phase, current/next/previous KeyContext, largest pn.
 * Key rotation (cs_rotate: the "quic ku" next generation, RFC 9001 6.1) lives here too.
 */
#include "native.h"

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
                             "v2", NULL};
    PyObject *suite, *hp_key;
    int key_phase;
    int v2 = 0;
    KeyContext *current;
    PyObject *next_obj;
    KeyContext *next = NULL; /* None: the "quic ku" generation, made when first needed */
    long long largest_pn;
    long suite_id;
    CidState *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OSiO!OL|p:CidState", kwlist, &suite,
                                     &hp_key, &key_phase, &KeyContextType, &current,
                                     &next_obj, &largest_pn, &v2)) {
        return NULL;
    }
    if (next_obj != Py_None) {
        if (!PyObject_TypeCheck(next_obj, &KeyContextType)) {
            PyErr_SetString(PyExc_TypeError, "next must be a KeyContext or None");
            return NULL;
        }
        next = (KeyContext *)next_obj;
    }
    suite_id = PyLong_AsLong(suite);
    if (suite_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (current->suite != suite_id || (next != NULL && next->suite != suite_id)) {
        PyErr_SetString(PyExc_ValueError, "key contexts of another suite");
        return NULL;
    }
    if (current->secret == Py_None || (next != NULL && next->secret == Py_None)) {
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
    self->next = next != NULL ? (KeyContext *)Py_NewRef(next) : NULL;
    self->previous = NULL;
    self->largest_pn = largest_pn;
    self->phase_start_pn = largest_pn + 1;
    self->v2 = v2;
    return (PyObject *)self;
}

/* The keys of the "quic ku" generation after `secret` (RFC 9001 6.1), or NULL with an
 * exception set. */
static KeyContext *
next_generation(CidState *self, PyObject *secret)
{
    SuiteInfo info;
    unsigned char ku[MAX_HASH_LEN], key[MAX_KEY_LEN], iv[IV_LEN];
    const EVP_MD *md;
    PyObject *ku_bytes;
    KeyContext *fresh;

    if (suite_info(self->suite_id, &info) < 0) {
        return NULL;
    }
    md = info.md();
    if (hkdf_expand_label_raw(md, (const unsigned char *)PyBytes_AS_STRING(secret),
                              (int)PyBytes_GET_SIZE(secret), self->v2 ? "quicv2 ku" : "quic ku",
                              info.hash_len, ku) < 0 ||
        hkdf_expand_label_raw(md, ku, info.hash_len, self->v2 ? "quicv2 key" : "quic key",
                              info.key_len, key) < 0 ||
        hkdf_expand_label_raw(md, ku, info.hash_len, self->v2 ? "quicv2 iv" : "quic iv",
                              IV_LEN, iv) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL: HKDF-Expand-Label failed");
        return NULL;
    }
    ku_bytes = PyBytes_FromStringAndSize((const char *)ku, info.hash_len);
    OPENSSL_cleanse(ku, sizeof(ku));
    if (ku_bytes == NULL) {
        return NULL;
    }
    fresh = kc_create(self->suite_id, key, iv, self->hp_key, ku_bytes);
    OPENSSL_cleanse(key, sizeof(key));
    Py_DECREF(ku_bytes);
    return fresh;
}

/* The next phase's keys: made from the current secret when first needed (a connection
 * that never sees a key update never makes them). NULL with an exception set. */
KeyContext *
cs_next(CidState *self)
{
    if (self->next == NULL) {
        self->next = next_generation(self, self->current->secret);
    }
    return self->next;
}

/* previous := current, current := next; flip phase (the generation after is made when
 * first needed, see cs_next). */
int
cs_rotate(CidState *self)
{
    KeyContext *next = cs_next(self);

    if (next == NULL) {
        return -1;
    }
    Py_XSETREF(self->previous, self->current);
    self->current = next; /* (the reference self->next held) */
    self->next = NULL;
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
cs_get_next(CidState *self, void *closure)
{
    KeyContext *next = cs_next(self);

    (void)closure;
    return next != NULL ? Py_NewRef((PyObject *)next) : NULL;
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
    {"next", (getter)cs_get_next, NULL, "KeyContext of the next phase (made when first "
     "asked for)", NULL},
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

PyTypeObject CidStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quicflow.crypto._native.CidState",
    .tp_basicsize = sizeof(CidState),
    .tp_dealloc = (destructor)cs_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CidState(suite, hp_key, key_phase, current, next, largest_pn): table entry "
              "(next None: derived from current when first needed)",
    .tp_getset = cs_getset,
    .tp_methods = cs_methods,
    .tp_new = cs_new,
};
