/*
 * quicflow.crypto._native -- fields: reading and writing the plain-data fields of the
 * transport's slotted dataclasses from C, for the C twins of Python code (bulk.c, ack.c,
 * pacer.c). A read returns 0, QF_FALLBACK when the value is not of the kind the twin
 * handles (not an exact int within QF_FIELD_MAX, not an exact float): the caller then
 * hands the whole call to the Python code before changing anything; or -1 with an
 * exception set.
 *
 * The slots at cached offsets. PyObject_GetAttr / SetAttr by name find the member
 * descriptor through the type's method cache and call it for every field (about 3.9 %
 * of a server's CPU with 256 bulk connections). For the usual case -- the attribute of
 * the object's type (looked up along its MRO as CPython does) is a member descriptor of
 * a plain object slot (T_OBJECT_EX, no flags: what __slots__ makes), and the type keeps
 * object's generic tp_getattro (reads) or tp_setattro (writes) -- that lookup gives the
 * slot at a fixed offset, which a small table remembers per (exact type, name): the
 * read takes the slot's value (an unset slot, NULL, goes the named way for its
 * AttributeError), a write puts the new value in and releases the old one, as
 * PyMember_SetOne does. An entry is used only while the type's version tag is the one it
 * was made under (CPython clears it on any change of the type or of a base: an attribute
 * set on the class, __bases__, a new __setattr__), and holds references to its type
 * and name, so neither can be freed and its address reused. Everything else -- a
 * property, a frozen dataclass's __setattr__, __getattr__ / __getattribute__, a type
 * without a valid version tag, a full table -- goes through PyObject_GetAttr / SetAttr
 * as before, with the same results and exceptions (tests/test_native_fields.py).
 */
#include "native.h"

#include <structmember.h>

/* A version tag CPython still vouches for: PyType_Modified clears it to 0 (and, up to
 * 3.12, clears Py_TPFLAGS_VALID_VERSION_TAG; 3.13 keeps the name but no longer sets the
 * flag); tags are never reused for another type */
#if PY_VERSION_HEX < 0x030D0000
#define TAG_VALID(t) (((t)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && (t)->tp_version_tag != 0)
#else
#define TAG_VALID(t) ((t)->tp_version_tag != 0)
#endif
#define SLOT_TABLE 1024 /* entries (a power of two): the twins use about 100 pairs */
#define SLOT_PROBES 16
typedef struct {
    PyTypeObject *type; /* (a strong reference; NULL: a free entry) */
    PyObject *name;     /* (a strong reference) */
    unsigned int tag;   /* type->tp_version_tag the entry was made under */
    Py_ssize_t offset;  /* the slot's offset, or 0: not a plain slot (named access) */
} SlotEntry;
static SlotEntry slot_table[SLOT_TABLE];

/* The offset of the plain object slot name resolves to on type, or 0 */
static Py_ssize_t
slot_offset_for(PyTypeObject *type, PyObject *name)
{
    PyObject *mro = type->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *base = PyTuple_GET_ITEM(mro, i);
        PyObject *dict = PyType_Check(base) ? ((PyTypeObject *)base)->tp_dict : NULL;
        if (dict == NULL || !PyDict_CheckExact(dict)) {
            return 0;
        }
        PyObject *descr = PyDict_GetItemWithError(dict, name); /* (borrowed) */
        if (descr == NULL) {
            if (PyErr_Occurred()) {
                PyErr_Clear(); /* (the named access meets it again and raises it) */
                return 0;
            }
            continue;
        }
        if (Py_TYPE(descr) != &PyMemberDescr_Type) {
            return 0;
        }
        PyMemberDescrObject *member = (PyMemberDescrObject *)descr;
        if (member->d_member->type != T_OBJECT_EX || member->d_member->flags != 0 ||
            member->d_member->offset <= 0 || member->d_common.d_type == NULL ||
            !PyType_IsSubtype(type, member->d_common.d_type)) {
            return 0;
        }
        return member->d_member->offset;
    }
    return 0;
}

#if defined(__GNUC__) || defined(__clang__)
#define QF_NOINLINE __attribute__((noinline))
#else
#define QF_NOINLINE
#endif

static inline size_t
slot_hash(PyTypeObject *type, PyObject *name)
{
    uint64_t x = ((uint64_t)(uintptr_t)type >> 4) ^
                 ((uint64_t)(uintptr_t)name >> 4) * 0x9E3779B97F4A7C15ull;
    return (size_t)(x ^ (x >> 29));
}

/* slot_of's table work: find or make the entry of (type, name), (re)made under the type's
 * current version tag */
static QF_NOINLINE PyObject **
slot_of_slow(PyObject *o, PyObject *name)
{
    PyTypeObject *type = Py_TYPE(o);
    if (!TAG_VALID(type)) {
        return NULL; /* (the named access gives it one; the next call makes the entry) */
    }
    unsigned int tag = type->tp_version_tag;
    size_t h = slot_hash(type, name);
    SlotEntry *e = NULL;
    for (int i = 0; i < SLOT_PROBES; i++) {
        SlotEntry *c = &slot_table[(h + (size_t)i) & (SLOT_TABLE - 1)];
        if (c->type == type && c->name == name) {
            e = c;
            break;
        }
        if (c->type == NULL) {
            e = c;
            Py_INCREF(type);
            Py_INCREF(name);
            e->type = type;
            e->name = name;
            e->tag = 0;
            break;
        }
    }
    if (e == NULL) {
        return NULL; /* (no room near its place: named access) */
    }
    if (e->tag != tag) {
        Py_ssize_t offset = slot_offset_for(type, name);
        if (!TAG_VALID(type) || type->tp_version_tag != tag) {
            return NULL; /* (the type changed during the lookup) */
        }
        e->offset = offset;
        e->tag = tag;
    }
    return e->offset ? (PyObject **)((char *)o + e->offset) : NULL;
}

/* The address of o's slot for name, or NULL: use the named access (write: for a store).
 * Inline: the entry at its first place, made under the type's current tag. */
static inline PyObject **
slot_of(PyObject *o, PyObject *name, int write)
{
    PyTypeObject *type = Py_TYPE(o);
    if (write ? type->tp_setattro != PyObject_GenericSetAttr
              : type->tp_getattro != PyObject_GenericGetAttr) {
        return NULL;
    }
    const SlotEntry *e = &slot_table[slot_hash(type, name) & (SLOT_TABLE - 1)];
    if (e->type == type && e->name == name && e->tag == type->tp_version_tag &&
        TAG_VALID(type)) {
        return e->offset ? (PyObject **)((char *)o + e->offset) : NULL;
    }
    return slot_of_slow(o, name);
}

PyObject *
qf_field_get(PyObject *o, PyObject *name)
{
    PyObject **slot = slot_of(o, name, 0);
    if (slot != NULL && *slot != NULL) {
        return Py_NewRef(*slot);
    }
    return PyObject_GetAttr(o, name);
}

int
qf_field_set(PyObject *o, PyObject *name, PyObject *v)
{
    PyObject **slot = slot_of(o, name, 1);
    if (slot != NULL) {
        PyObject *old = *slot;
        *slot = Py_NewRef(v);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(o, name, v);
}

/* field_slot(o, name, write): the slot offset the fast path uses, or None (for tests) */
PyObject *
mod_field_slot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "field_slot(o, name: str, write: bool)");
        return NULL;
    }
    int write = PyObject_IsTrue(args[2]);
    if (write < 0) {
        return NULL;
    }
    PyObject *name = Py_NewRef(args[1]);
    PyUnicode_InternInPlace(&name);
    PyObject **slot = slot_of(args[0], name, write);
    Py_DECREF(name);
    if (slot == NULL) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t((char *)slot - (char *)args[0]);
}

/* field_get(o, name) / field_set(o, name, v): qf_field_get / qf_field_set (for tests) */
PyObject *
mod_field_get(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "field_get(o, name: str)");
        return NULL;
    }
    PyObject *name = Py_NewRef(args[1]);
    PyUnicode_InternInPlace(&name);
    PyObject *v = qf_field_get(args[0], name);
    Py_DECREF(name);
    return v;
}

PyObject *
mod_field_set(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "field_set(o, name: str, v)");
        return NULL;
    }
    PyObject *name = Py_NewRef(args[1]);
    PyUnicode_InternInPlace(&name);
    int r = qf_field_set(args[0], name, args[2]);
    Py_DECREF(name);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

int
qf_get_obj(PyObject *o, PyObject *name, PyObject **out)
{
    *out = qf_field_get(o, name);
    return *out == NULL ? -1 : 0;
}

int
qf_as_ll(PyObject *v, long long *out)
{
    int overflow;
    if (!PyLong_CheckExact(v)) {
        return QF_FALLBACK;
    }
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    return overflow || *out > QF_FIELD_MAX || *out < -QF_FIELD_MAX ? QF_FALLBACK : 0;
}

int
qf_get_ll(PyObject *o, PyObject *name, long long *out)
{
    PyObject *v = qf_field_get(o, name);
    int r;
    if (v == NULL) {
        return -1;
    }
    r = qf_as_ll(v, out);
    Py_DECREF(v);
    return r;
}

int
qf_get_float(PyObject *o, PyObject *name, double *out)
{
    PyObject *v = qf_field_get(o, name);
    int r = 0;
    if (v == NULL) {
        return -1;
    }
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
    } else {
        r = QF_FALLBACK;
    }
    Py_DECREF(v);
    return r;
}

int
qf_get_bool(PyObject *o, PyObject *name, int *out)
{
    PyObject *v = qf_field_get(o, name);
    if (v == NULL) {
        return -1;
    }
    *out = PyObject_IsTrue(v);
    Py_DECREF(v);
    return *out < 0 ? -1 : 0;
}

int
qf_set_ll(PyObject *o, PyObject *name, long long v)
{
    PyObject *x = PyLong_FromLongLong(v);
    int r;
    if (x == NULL) {
        return -1;
    }
    r = qf_field_set(o, name, x);
    Py_DECREF(x);
    return r;
}

int
qf_set_float(PyObject *o, PyObject *name, double v)
{
    PyObject *x = PyFloat_FromDouble(v);
    int r;
    if (x == NULL) {
        return -1;
    }
    r = qf_field_set(o, name, x);
    Py_DECREF(x);
    return r;
}

/* o.name += k (Python int arithmetic, whatever the size) */
int
qf_add_attr(PyObject *o, PyObject *name, long long k)
{
    PyObject *v = qf_field_get(o, name), *x, *sum;
    int r;
    if (v == NULL) {
        return -1;
    }
    x = PyLong_FromLongLong(k);
    if (x == NULL) {
        Py_DECREF(v);
        return -1;
    }
    sum = PyNumber_Add(v, x);
    Py_DECREF(v);
    Py_DECREF(x);
    if (sum == NULL) {
        return -1;
    }
    r = qf_field_set(o, name, sum);
    Py_DECREF(sum);
    return r;
}

int
qf_get_float_or_none(PyObject *o, PyObject *name, double *out, int *is_none)
{
    PyObject *v = qf_field_get(o, name);
    int r = 0;
    if (v == NULL) {
        return -1;
    }
    *is_none = v == Py_None;
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
    } else if (v != Py_None) {
        r = QF_FALLBACK;
    }
    Py_DECREF(v);
    return r;
}

int
qf_get_exact_bool(PyObject *o, PyObject *name, int *out)
{
    PyObject *v = qf_field_get(o, name);
    int r = 0;
    if (v == NULL) {
        return -1;
    }
    if (v == Py_True || v == Py_False) {
        *out = v == Py_True;
    } else {
        r = QF_FALLBACK;
    }
    Py_DECREF(v);
    return r;
}
