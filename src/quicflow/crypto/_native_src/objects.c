/*
 * Objects of the Python classes the parsers return (frames.c, header.c), built without
 * a call of their __init__ when that is the same object.
 *
 * The classes are slotted dataclasses (wire/frame_types.py, wire/packet.PacketHeader)
 * whose generated __init__ only assigns each field in __slots__ order.  For such a
 * class -- object's __new__, no __post_init__, no instance dict, every __slots__ entry
 * a plain object slot -- the object is the type's allocation with its slots set, which
 * is what qf_build makes; for any other class qf_layout_for says so (nfields -1) and
 * qf_build calls the class with the arguments, as before.  The Python tests check that
 * the classes stay of this kind (tests/test_frame_parse_native.py,
 * tests/test_headers_native.py).
 */
#include "native.h"

#include <structmember.h>

int
qf_layout_for(PyObject *cls, QfLayout *out)
{
    out->nfields = -1;
    if (!PyType_Check(cls)) {
        return 0;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    if (type->tp_new != PyBaseObject_Type.tp_new || type->tp_alloc == NULL ||
        type->tp_dictoffset != 0 || !(type->tp_flags & Py_TPFLAGS_HEAPTYPE) ||
        type->tp_base != &PyBaseObject_Type) {
        return 0;
    }
    PyObject *dict = type->tp_dict;
    PyObject *post = PyDict_GetItemString(dict, "__post_init__");
    PyObject *slots = PyDict_GetItemString(dict, "__slots__");
    if (post != NULL || slots == NULL || !PyTuple_Check(slots) ||
        PyTuple_GET_SIZE(slots) > QF_MAX_FIELDS) {
        return 0;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(slots);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        PyObject *descr = PyUnicode_Check(name) ? PyDict_GetItemWithError(dict, name) : NULL;
        if (descr == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        if (Py_TYPE(descr) != &PyMemberDescr_Type) {
            return 0;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
            return 0;
        }
        out->offsets[i] = member->offset;
    }
    out->nfields = n;
    return 0;
}

PyObject *
qf_build(PyObject *cls, const QfLayout *layout, PyObject **args, Py_ssize_t n)
{
    PyObject *out = NULL;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        if (args[i] == NULL) {
            goto done;
        }
    }
    if (layout->nfields == n) {
        PyTypeObject *type = (PyTypeObject *)cls;
        out = type->tp_alloc(type, 0);
        if (out != NULL) {
            for (i = 0; i < n; i++) { /* (the slots are NULL: nothing to release) */
                *(PyObject **)((char *)out + layout->offsets[i]) = args[i];
            }
            return out; /* the references in args went into the slots */
        }
        goto done;
    }
    out = PyObject_Vectorcall(cls, args, (size_t)n, NULL);
done:
    for (i = 0; i < n; i++) {
        Py_XDECREF(args[i]);
    }
    return out;
}
