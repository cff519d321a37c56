/*
 * quicflow.crypto._native -- fields: reading and writing the plain-data fields of the
 * transport's slotted dataclasses from C, for the C twins of Python code (bulk.c, ack.c,
 * pacer.c). A read returns 0, QF_FALLBACK when the value is not of the kind the twin
 * handles (not an exact int within QF_FIELD_MAX, not an exact float): the caller then
 * hands the whole call to the Python code before changing anything; or -1 with an
 * exception set.
 */
#include "native.h"

int
qf_get_obj(PyObject *o, PyObject *name, PyObject **out)
{
    *out = PyObject_GetAttr(o, name);
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
    PyObject *v = PyObject_GetAttr(o, name);
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
    PyObject *v = PyObject_GetAttr(o, name);
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
    PyObject *v = PyObject_GetAttr(o, name);
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
    r = PyObject_SetAttr(o, name, x);
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
    r = PyObject_SetAttr(o, name, x);
    Py_DECREF(x);
    return r;
}

/* o.name += k (Python int arithmetic, whatever the size) */
int
qf_add_attr(PyObject *o, PyObject *name, long long k)
{
    PyObject *v = PyObject_GetAttr(o, name), *x, *sum;
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
    r = PyObject_SetAttr(o, name, sum);
    Py_DECREF(sum);
    return r;
}

int
qf_get_float_or_none(PyObject *o, PyObject *name, double *out, int *is_none)
{
    PyObject *v = PyObject_GetAttr(o, name);
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
    PyObject *v = PyObject_GetAttr(o, name);
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
