/*
 * quicflow.crypto._native -- batch: the seal(table, buf, packets) and
 * open(table, buf, packets, result_type) loops over packet descriptors in one buffer,
 * with packet-number recovery (RFC 9000 A.3) and key-phase handling on open.
 */
#include "native.h"

/* Unpack a descriptor of exactly n items; *owned receives a new reference to drop later. */
int
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

CidState *
lookup(PyObject *table, PyObject *cid)
{
    PyObject *state = PyDict_GetItemWithError(table, cid);
    if (state != NULL && !Py_IS_TYPE(state, &CidStateType)) {
        PyErr_SetString(PyExc_TypeError, "offload table entry is not a CidState");
        return NULL;
    }
    return (CidState *)state;
}

int
batch_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, const char *usage,
           int flags, PyObject **table, Py_buffer *view, PyObject **seq)
{
    if (nargs != expected) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (!PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "table must be a dict");
        return -1;
    }
    if (PyObject_GetBuffer(args[1], view, flags) < 0) {
        return -1;
    }
    *seq = PySequence_Fast(args[2], "packets must be a sequence");
    if (*seq == NULL) {
        PyBuffer_Release(view);
        return -1;
    }
    *table = args[0];
    return 0;
}

PyObject *
mod_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *seq = NULL, *last_cid = NULL;
    CidState *state = NULL;
    Py_buffer view = {0};
    Py_ssize_t n, i;
    unsigned char *buf;

    (void)module;
    if (batch_args(args, nargs, 3, "seal(table, buf, packets)", PyBUF_WRITABLE, &table, &view,
                   &seq) < 0) {
        return NULL;
    }
    buf = view.buf;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        PyObject *f[5], *owned;
        Py_ssize_t offset, header_len, payload_len, body, end, pn_offset, sample_at;
        unsigned long long pn;
        unsigned char first;
        int pn_len;

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
        if (seal_one(state, buf, offset, (int)header_len, (int)payload_len, pn, pn_len,
                     first) < 0) {
            goto error;
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
    unsigned char local[HDR_LOCAL], *hdr = local;
    OpenPrep op;
    PyObject *header = NULL, *payload = NULL, *result = NULL;
    int rc;

    if (cid_len > HDR_LOCAL - 5) {
        hdr = PyMem_Malloc((size_t)cid_len + 5);
        if (hdr == NULL) {
            return PyErr_NoMemory();
        }
    }
    rc = open_prepare(state, buf, buf_len, offset, length, cid_len, hdr, &op);
    if (rc != 0) {
        result = rc > 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    header = PyBytes_FromStringAndSize((const char *)hdr, op.hdr_len);
    payload = PyBytes_FromStringAndSize(NULL, op.plen);
    if (header == NULL || payload == NULL) {
        goto done;
    }
    rc = open_finish(state, buf, hdr, &op, (unsigned char *)PyBytes_AS_STRING(payload));
    if (rc != 0) {
        result = rc > 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    result = make_result(rtype, op.pn, header, payload, op.phase, op.rotate);
done:
    Py_XDECREF(header);
    Py_XDECREF(payload);
    if (hdr != local) {
        PyMem_Free(hdr);
    }
    return result;
}

PyObject *
mod_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *seq = NULL, *results = NULL, *out;
    PyTypeObject *rtype = NULL;
    CidCache cache = {0};
    Py_buffer view = {0};
    Py_ssize_t n, i, failures = 0;

    (void)module;
    if (batch_args(args, nargs, 4, "open(table, buf, packets, result_type)", PyBUF_SIMPLE,
                   &table, &view, &seq) < 0) {
        return NULL;
    }
    if (args[3] != Py_None) {
        if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "result_type must be a tuple subclass or None");
            goto error;
        }
        rtype = (PyTypeObject *)args[3];
    }
    n = PySequence_Fast_GET_SIZE(seq);
    results = PyList_New(n);
    if (results == NULL) {
        goto error;
    }
    for (i = 0; i < n; i++) {
        PyObject *r;
        Py_ssize_t offset, length;

        if (open_descriptor(table, PySequence_Fast_GET_ITEM(seq, i), &offset, &length,
                            &cache) < 0) {
            goto error;
        }
        if (cache.state == NULL) {
            failures++;
            PyList_SET_ITEM(results, i, Py_NewRef(Py_None));
            continue;
        }
        r = open_one(cache.state, view.buf, view.len, offset, length, cache.cid_len, rtype);
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
