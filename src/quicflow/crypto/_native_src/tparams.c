/*
 * decode_tparams(data, from_server, specs, server_only[, high]) -> dict | None
 *
 * The common case of decoding a peer's transport parameters (RFC 9000 18): every
 * parameter well formed and within its limits, each id at most once.  Returns the
 * {field name: value} dict that wire/tparams.decode_transport_parameters builds for the
 * same bytes, or None for anything else: any error (truncation, a bad length or value, a
 * repeated id, a server-only id from a client), a preferred_address, or more than
 * MAX_HIGH_IDS distinct ids of 64 and up.  The caller then runs the Python decoder, which
 * is the reference: it decodes the rare case and raises each error with its message, so
 * that the result (or the error) never depends on which decoder ran.
 *
 * specs: a tuple indexed by parameter id (ids at or past its end are skipped):
 *   None               unknown here: skipped (like GREASE and any unknown id)
 *   (name, lo, hi)     an integer parameter (a varint filling the value exactly, lo..hi)
 *   (name, kind)       kind 1: a connection ID (at most 20 bytes), 2: a 16-byte token,
 *                      3: an empty flag (True), 4: a version list (4k bytes, k >= 1, the
 *                      first nonzero), anything else: not decoded here (None)
 * server_only: bit i set = id i is a server-only parameter (ids below 64).
 * high: optional dict {id: (name, lo, hi)} of integer parameters with ids at or past the
 *       end of specs (e.g. min_ack_delay, 0xff04de1b); other such ids are skipped.
 */
#include "native.h"

#define MAX_HIGH_IDS 64
#define MAX_CID_LEN 20

/* 1: decoded into values, 0: not here (the caller returns None), -1: a Python error */
static int
decode_one(PyObject *values, PyObject *spec, const uint8_t *b, Py_ssize_t pos,
           Py_ssize_t end)
{
    Py_ssize_t length = end - pos;
    PyObject *name = PyTuple_GET_ITEM(spec, 0);
    PyObject *value;
    if (PyTuple_GET_SIZE(spec) == 3) {
        unsigned long long lo = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(spec, 1));
        unsigned long long hi = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(spec, 2));
        if (PyErr_Occurred()) {
            return -1;
        }
        uint64_t v;
        Py_ssize_t p = pos;
        if (qf_varint(b, end, &p, &v) < 0 || p != end || v < lo || v > hi) {
            return 0;
        }
        value = PyLong_FromUnsignedLongLong(v);
    } else {
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (kind == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (kind == 1) {
            if (length > MAX_CID_LEN) {
                return 0;
            }
            value = PyBytes_FromStringAndSize((const char *)b + pos, length);
        } else if (kind == 2) {
            if (length != 16) {
                return 0;
            }
            value = PyBytes_FromStringAndSize((const char *)b + pos, length);
        } else if (kind == 3) {
            if (length != 0) {
                return 0;
            }
            value = Py_NewRef(Py_True);
        } else if (kind == 4) {
            if (length < 4 || length % 4 || (b[pos] | b[pos + 1] | b[pos + 2] | b[pos + 3]) == 0) {
                return 0;
            }
            value = PyList_New(length / 4);
            if (value == NULL) {
                return -1;
            }
            for (Py_ssize_t i = 0; i < length / 4; i++) {
                const uint8_t *q = b + pos + 4 * i;
                uint32_t v = ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) |
                             ((uint32_t)q[2] << 8) | q[3];
                PyObject *item = PyLong_FromUnsignedLong(v);
                if (item == NULL) {
                    Py_DECREF(value);
                    return -1;
                }
                PyList_SET_ITEM(value, i, item);
            }
        } else {
            return 0;
        }
    }
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(values, name, value);
    Py_DECREF(value);
    return rc < 0 ? -1 : 1;
}

PyObject *
mod_decode_tparams(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 4 || nargs > 5 || !PyTuple_Check(args[2]) ||
        (nargs == 5 && !PyDict_Check(args[4]))) {
        PyErr_SetString(PyExc_TypeError,
                        "decode_tparams(data, from_server, specs: tuple, server_only[, high: dict])");
        return NULL;
    }
    PyObject *high = nargs == 5 && PyDict_GET_SIZE(args[4]) ? args[4] : NULL;
    int from_server = PyObject_IsTrue(args[1]);
    if (from_server < 0) {
        return NULL;
    }
    PyObject *specs = args[2];
    Py_ssize_t n_specs = PyTuple_GET_SIZE(specs);
    uint64_t server_only = PyLong_AsUnsignedLongLong(args[3]);
    if (server_only == (uint64_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *b = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len;
    PyObject *values = PyDict_New();
    if (values == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t seen_low = 0;
    uint64_t seen_high[MAX_HIGH_IDS];
    int n_high = 0;
    Py_ssize_t pos = 0;
    while (pos < n) {
        uint64_t pid, length;
        if (qf_varint(b, n, &pos, &pid) < 0 || qf_varint(b, n, &pos, &length) < 0 ||
            length > (uint64_t)(n - pos)) {
            goto not_here;
        }
        Py_ssize_t end = pos + (Py_ssize_t)length;
        if (pid < 64) {
            if (seen_low >> pid & 1) {
                goto not_here;
            }
            seen_low |= (uint64_t)1 << pid;
            if (!from_server && (server_only >> pid & 1)) {
                goto not_here;
            }
        } else {
            for (int i = 0; i < n_high; i++) {
                if (seen_high[i] == pid) {
                    goto not_here;
                }
            }
            if (n_high == MAX_HIGH_IDS) {
                goto not_here;
            }
            seen_high[n_high++] = pid;
        }
        PyObject *spec = Py_None;
        if (pid < (uint64_t)n_specs) {
            spec = PyTuple_GET_ITEM(specs, (Py_ssize_t)pid);
        } else if (high != NULL) {
            PyObject *key = PyLong_FromUnsignedLongLong(pid);
            if (key == NULL) {
                goto error;
            }
            spec = PyDict_GetItemWithError(high, key); /* borrowed */
            Py_DECREF(key);
            if (spec == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
                spec = Py_None;
            }
        }
        if (spec != Py_None) {
            if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 2) {
                PyErr_SetString(PyExc_TypeError, "decode_tparams: bad spec");
                goto error;
            }
            int rc = decode_one(values, spec, b, pos, end);
            if (rc < 0) {
                goto error;
            }
            if (rc == 0) {
                goto not_here;
            }
        }
        pos = end;
    }
    PyBuffer_Release(&view);
    return values;
not_here:
    PyBuffer_Release(&view);
    Py_DECREF(values);
    Py_RETURN_NONE;
error:
    PyBuffer_Release(&view);
    Py_DECREF(values);
    return NULL;
}
