/*
 * quicflow.crypto._native -- plan: the C twin of the functions
 * transport/inline.py's inline_init writes (a new connection's ~35 slotted objects and
 * ~50 lists and dicts, made by one call).
 *
 * object_plan(node, argnames) compiles a description of what the Python function makes
 * (inline.py's _Writer gives both from one walk of the classes) into a flat list of
 * stack operations, checked once:
 *
 *   ("c", value)                 the value itself (shared, as the Python function's
 *                                constants are)
 *   ("a", i)                     the call's keyword argument argnames[i]
 *   ("d",)                       a new empty dict
 *   ("f", factory)               factory() (a default factory that is not inlined)
 *   ("l", (node, ...))           a new list of those values, in order
 *   ("o", cls, ((name, node), ...))
 *                                cls's allocation (what object.__new__(cls) does) with
 *                                each named slot set to its node's value
 *
 * The Plan it returns is called with exactly the keyword arguments argnames, as the
 * Python function is (object_plan(node, argnames, k): the first k of them may also be
 * given by position, in order, as a dataclass's own constructor takes its fields; see
 * inline.py's fast_init), and returns the same object graph: the same classes, the same
 * values in the same slots, every list, dict and object new and the constants and
 * arguments shared (tests/test_inline_plan.py compares the two field by field).
 *
 * A class is accepted only where setting its slots directly is what the Python
 * function's "obj.name = value" does: object's __new__ (tp_new) and generic
 * __setattr__ (tp_setattro), not abstract, and each name a plain object slot (a member
 * descriptor of type T_OBJECT_EX, not read-only) found first along the class's MRO;
 * otherwise object_plan raises TypeError and inline.py keeps the Python function. A
 * Plan keeps references to everything it names; the slot offsets are read from the
 * descriptors when compiled (a class's layout never changes once made).
 */
#include "native.h"

#include <structmember.h>

#define PLAN_STACK 256

enum { OP_CONST, OP_ARG, OP_DICT, OP_CALL, OP_LIST, OP_OBJ };

typedef struct {
    int op;
    Py_ssize_t n;          /* OP_ARG: the index; OP_LIST, OP_OBJ: values popped */
    PyObject *obj;         /* OP_CONST: the value; OP_CALL: the factory; OP_OBJ: cls */
    Py_ssize_t *offsets;   /* OP_OBJ: the n slots' offsets, in push order */
} PlanOp;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PlanOp *ops;
    Py_ssize_t nops, cap, depth, max_depth;
    PyObject *argnames;     /* a tuple of str */
    Py_ssize_t npositional; /* how many of them may also come by position, in order */
} PlanObject;

static void
plan_dealloc(PlanObject *self)
{
    for (Py_ssize_t i = 0; i < self->nops; i++) {
        Py_XDECREF(self->ops[i].obj);
        PyMem_Free(self->ops[i].offsets);
    }
    PyMem_Free(self->ops);
    Py_XDECREF(self->argnames);
    PyObject_Free(self);
}

static int
plan_push(PlanObject *p, int op, Py_ssize_t n, PyObject *obj, Py_ssize_t *offsets,
          Py_ssize_t depth_change)
{
    if (p->nops == p->cap) {
        Py_ssize_t cap = p->cap ? p->cap * 2 : 64;
        PlanOp *ops = PyMem_Realloc(p->ops, (size_t)cap * sizeof(PlanOp));
        if (ops == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        p->ops = ops;
        p->cap = cap;
    }
    PlanOp *o = &p->ops[p->nops++];
    o->op = op;
    o->n = n;
    Py_XINCREF(obj);
    o->obj = obj;
    o->offsets = offsets;
    p->depth += depth_change;
    if (p->depth > p->max_depth) {
        p->max_depth = p->depth;
    }
    return 0;
}

/* The offset of the plain object slot `name` of type (the first hit along its MRO), or
 * 0 with TypeError set */
static Py_ssize_t
plan_slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *mro = type->tp_mro;
    if (PyUnicode_Check(name) && mro != NULL && PyTuple_Check(mro)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
            PyObject *base = PyTuple_GET_ITEM(mro, i);
            PyObject *dict = PyType_Check(base) ? ((PyTypeObject *)base)->tp_dict : NULL;
            if (dict == NULL || !PyDict_Check(dict)) {
                break;
            }
            PyObject *descr = PyDict_GetItemWithError(dict, name); /* (borrowed) */
            if (descr == NULL) {
                if (PyErr_Occurred()) {
                    return 0;
                }
                continue;
            }
            if (Py_TYPE(descr) == &PyMemberDescr_Type) {
                PyMemberDescrObject *m = (PyMemberDescrObject *)descr;
                if (m->d_member->type == T_OBJECT_EX && !(m->d_member->flags & READONLY) &&
                    m->d_member->offset > 0 && m->d_common.d_type != NULL &&
                    PyType_IsSubtype(type, m->d_common.d_type)) {
                    return m->d_member->offset;
                }
            }
            break;
        }
    }
    PyErr_Format(PyExc_TypeError, "object_plan: %R is not a plain slot of %s", name,
                 type->tp_name);
    return 0;
}

static int
plan_compile(PlanObject *p, PyObject *node, Py_ssize_t nargs, int level)
{
    if (level > 64) {
        PyErr_SetString(PyExc_TypeError, "object_plan: nested too deep");
        return -1;
    }
    if (!PyTuple_Check(node) || PyTuple_GET_SIZE(node) < 1 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(node, 0))) {
        PyErr_Format(PyExc_TypeError, "object_plan: not a node: %R", node);
        return -1;
    }
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(node, 0));
    Py_ssize_t size = PyTuple_GET_SIZE(node);
    if (kind == NULL) {
        return -1;
    }
    if (kind[0] == 'c' && kind[1] == 0 && size == 2) {
        return plan_push(p, OP_CONST, 0, PyTuple_GET_ITEM(node, 1), NULL, 1);
    }
    if (kind[0] == 'a' && kind[1] == 0 && size == 2) {
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(node, 1));
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (i < 0 || i >= nargs) {
            PyErr_SetString(PyExc_TypeError, "object_plan: argument index out of range");
            return -1;
        }
        return plan_push(p, OP_ARG, i, NULL, NULL, 1);
    }
    if (kind[0] == 'd' && kind[1] == 0 && size == 1) {
        return plan_push(p, OP_DICT, 0, NULL, NULL, 1);
    }
    if (kind[0] == 'f' && kind[1] == 0 && size == 2 && PyCallable_Check(PyTuple_GET_ITEM(node, 1))) {
        return plan_push(p, OP_CALL, 0, PyTuple_GET_ITEM(node, 1), NULL, 1);
    }
    if (kind[0] == 'l' && kind[1] == 0 && size == 2 && PyTuple_Check(PyTuple_GET_ITEM(node, 1))) {
        PyObject *items = PyTuple_GET_ITEM(node, 1);
        Py_ssize_t n = PyTuple_GET_SIZE(items);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (plan_compile(p, PyTuple_GET_ITEM(items, i), nargs, level + 1) < 0) {
                return -1;
            }
        }
        return plan_push(p, OP_LIST, n, NULL, NULL, 1 - n);
    }
    if (kind[0] == 'o' && kind[1] == 0 && size == 3 && PyType_Check(PyTuple_GET_ITEM(node, 1)) &&
        PyTuple_Check(PyTuple_GET_ITEM(node, 2))) {
        PyTypeObject *type = (PyTypeObject *)PyTuple_GET_ITEM(node, 1);
        PyObject *fields = PyTuple_GET_ITEM(node, 2);
        Py_ssize_t n = PyTuple_GET_SIZE(fields);
        if (type->tp_new != PyBaseObject_Type.tp_new || type->tp_alloc == NULL ||
            type->tp_setattro != PyObject_GenericSetAttr ||
            (type->tp_flags & Py_TPFLAGS_IS_ABSTRACT)) {
            PyErr_Format(PyExc_TypeError, "object_plan: %s is not made by object.__new__ "
                         "with plain slot stores", type->tp_name);
            return -1;
        }
        Py_ssize_t *offsets = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_ssize_t));
        if (offsets == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyTuple_GET_ITEM(fields, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "object_plan: a field is (name, node)");
                goto fail;
            }
            offsets[i] = plan_slot_offset(type, PyTuple_GET_ITEM(pair, 0));
            if (offsets[i] == 0) {
                goto fail;
            }
            for (Py_ssize_t j = 0; j < i; j++) {
                if (offsets[j] == offsets[i]) {
                    PyErr_SetString(PyExc_TypeError, "object_plan: a slot set twice");
                    goto fail;
                }
            }
            if (plan_compile(p, PyTuple_GET_ITEM(pair, 1), nargs, level + 1) < 0) {
                goto fail;
            }
        }
        if (plan_push(p, OP_OBJ, n, (PyObject *)type, offsets, 1 - n) < 0) {
            goto fail;
        }
        return 0;
    fail:
        PyMem_Free(offsets);
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "object_plan: not a node: %R", node);
    return -1;
}

static PyObject *
plan_run(PlanObject *p, PyObject *const *argv)
{
    PyObject *small[PLAN_STACK]; /* (a connection's plan needs about 120) */
    PyObject **stack = small;
    Py_ssize_t top = 0;
    if (p->max_depth > PLAN_STACK) {
        stack = PyMem_Malloc((size_t)p->max_depth * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    for (Py_ssize_t k = 0; k < p->nops; k++) {
        const PlanOp *o = &p->ops[k];
        PyObject *v;
        switch (o->op) {
        case OP_CONST:
            v = Py_NewRef(o->obj);
            break;
        case OP_ARG:
            v = Py_NewRef(argv[o->n]);
            break;
        case OP_DICT:
            v = PyDict_New();
            break;
        case OP_CALL:
            v = PyObject_CallNoArgs(o->obj);
            break;
        case OP_LIST:
            v = PyList_New(o->n);
            if (v != NULL) {
                top -= o->n;
                for (Py_ssize_t i = 0; i < o->n; i++) {
                    PyList_SET_ITEM(v, i, stack[top + i]); /* (the stack's reference) */
                }
            }
            break;
        default: { /* OP_OBJ */
            PyTypeObject *type = (PyTypeObject *)o->obj;
            v = type->tp_alloc(type, 0);
            if (v != NULL) {
                top -= o->n;
                for (Py_ssize_t i = 0; i < o->n; i++) { /* (new slots are NULL) */
                    *(PyObject **)((char *)v + o->offsets[i]) = stack[top + i];
                }
            }
            break;
        }
        }
        if (v == NULL) {
            while (top > 0) {
                Py_DECREF(stack[--top]);
            }
            if (stack != small) {
                PyMem_Free(stack);
            }
            return NULL;
        }
        stack[top++] = v;
    }
    PyObject *out = NULL;
    if (top == 1) { /* (always: object_plan checked that the plan leaves one value) */
        out = stack[0];
    } else {
        while (top > 0) {
            Py_DECREF(stack[--top]);
        }
        PyErr_SetString(PyExc_SystemError, "object_plan: a plan left no single value");
    }
    if (stack != small) {
        PyMem_Free(stack);
    }
    return out;
}

static PyObject *
plan_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PlanObject *p = (PlanObject *)self;
    Py_ssize_t npos = PyVectorcall_NARGS(nargsf);
    Py_ssize_t n = PyTuple_GET_SIZE(p->argnames);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *small[16];
    PyObject **argv = small;
    if (npos > p->npositional) {
        PyErr_Format(PyExc_TypeError, "make() takes %zd positional arguments but %zd were "
                     "given", p->npositional, npos);
        return NULL;
    }
    if (n > 16) {
        argv = PyMem_Calloc((size_t)n, sizeof(PyObject *));
        if (argv == NULL) {
            return PyErr_NoMemory();
        }
    } else {
        memset(small, 0, sizeof(small));
    }
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < npos; i++) {
        argv[i] = args[i];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        Py_ssize_t j = 0;
        for (; j < n; j++) { /* (interned names: found by identity) */
            if (PyTuple_GET_ITEM(p->argnames, j) == name) {
                break;
            }
        }
        if (j == n) {
            for (j = 0; j < n; j++) {
                int eq = PyUnicode_Compare(PyTuple_GET_ITEM(p->argnames, j), name);
                if (eq == -1 && PyErr_Occurred()) {
                    goto done;
                }
                if (eq == 0) {
                    break;
                }
            }
        }
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "make() got an unexpected keyword argument %R", name);
            goto done;
        }
        if (argv[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "make() got multiple values for argument %R", name);
            goto done;
        }
        argv[j] = args[npos + i];
    }
    for (Py_ssize_t j = 0; j < n; j++) {
        if (argv[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "make() missing keyword argument %R",
                         PyTuple_GET_ITEM(p->argnames, j));
            goto done;
        }
    }
    out = plan_run(p, argv);
done:
    if (argv != small) {
        PyMem_Free(argv);
    }
    return out;
}

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "quicflow.crypto._native.Plan",
    .tp_basicsize = sizeof(PlanObject),
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_vectorcall_offset = offsetof(PlanObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A compiled object_plan: call it with its keyword arguments",
};

int
qf_plan_type_ready(void)
{
    return PyType_Ready(&PlanType);
}

PyObject *
mod_object_plan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t npositional = 0;
    if ((nargs != 2 && nargs != 3) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "object_plan(node, argnames: tuple of str[, positional: int])");
        return NULL;
    }
    PyObject *argnames = args[1];
    if (nargs == 3) {
        npositional = PyLong_AsSsize_t(args[2]);
        if (npositional == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (npositional < 0 || npositional > PyTuple_GET_SIZE(argnames)) {
            PyErr_SetString(PyExc_ValueError, "object_plan: positional out of range");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(argnames); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(argnames, i))) {
            PyErr_SetString(PyExc_TypeError, "object_plan: argnames must be str");
            return NULL;
        }
    }
    PlanObject *p = PyObject_New(PlanObject, &PlanType);
    if (p == NULL) {
        return NULL;
    }
    p->vectorcall = plan_vectorcall;
    p->ops = NULL;
    p->nops = p->cap = p->depth = p->max_depth = 0;
    p->argnames = Py_NewRef(argnames);
    p->npositional = npositional;
    if (plan_compile(p, args[0], PyTuple_GET_SIZE(argnames), 0) < 0) {
        Py_DECREF(p);
        return NULL;
    }
    if (p->depth != 1) {
        PyErr_SetString(PyExc_TypeError, "object_plan: the plan does not make one object");
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}
