/*
 * quicflow.crypto._native -- segments: short_run(buf, pos, segment_size, key), the C twin
 * of endpoint/segments.py's short_run_python (tests/test_segments_native.py compares them),
 * and its result, a Segments object: the run entries (offset, length, dcid) of a GRO
 * buffer's segments as a read-only sequence whose tuples are made only when asked for.
 * open_run (coalesce.c) walks a Segments run by its stride, without them: a download's
 * receiver got one tuple per datagram (about 0.9 M per GiB) only for open_run to unpack.
 */
#include "native.h"

typedef struct {
    PyObject_HEAD Py_ssize_t pos; /* the first segment's offset */
    Py_ssize_t size;              /* the segment size (> 0) */
    Py_ssize_t total;             /* the buffer's length: the last segment ends there */
    Py_ssize_t count;             /* segments from pos to total (>= 1) */
    PyObject *key;                /* the dcid object given (the entries' third item) */
} Segments;

static void
segments_dealloc(PyObject *self)
{
    Py_XDECREF(((Segments *)self)->key);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t
segments_len(PyObject *self)
{
    return ((Segments *)self)->count;
}

void
qf_segment_at(PyObject *obj, Py_ssize_t i, Py_ssize_t *offset, Py_ssize_t *length)
{
    Segments *s = (Segments *)obj;
    *offset = s->pos + i * s->size;
    *length = s->total - *offset < s->size ? s->total - *offset : s->size;
}

static PyObject *
segments_item(PyObject *self, Py_ssize_t i)
{
    Segments *s = (Segments *)self;
    Py_ssize_t offset, length;
    PyObject *off, *len, *out;
    if (i < 0 || i >= s->count) {
        PyErr_SetString(PyExc_IndexError, "Segments index out of range");
        return NULL;
    }
    qf_segment_at(self, i, &offset, &length);
    off = PyLong_FromSsize_t(offset);
    len = PyLong_FromSsize_t(length);
    if (off == NULL || len == NULL) {
        Py_XDECREF(off);
        Py_XDECREF(len);
        return NULL;
    }
    out = PyTuple_New(3);
    if (out == NULL) {
        Py_DECREF(off);
        Py_DECREF(len);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, off);
    PyTuple_SET_ITEM(out, 1, len);
    PyTuple_SET_ITEM(out, 2, Py_NewRef(s->key));
    return out;
}

static PySequenceMethods segments_as_sequence = {
    .sq_length = segments_len,
    .sq_item = segments_item,
};

static PyTypeObject SegmentsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "quicflow.crypto._native.Segments",
    .tp_basicsize = sizeof(Segments),
    .tp_dealloc = segments_dealloc,
    .tp_as_sequence = &segments_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The run entries (offset, length, dcid) of a GRO buffer's segments from an "
              "offset on (short_run's result): a read-only sequence",
};

int
qf_segments_ready(void)
{
    return PyType_Ready(&SegmentsType);
}

Py_ssize_t
qf_segments(PyObject *obj, PyObject **key)
{
    if (!Py_IS_TYPE(obj, &SegmentsType)) {
        return -1;
    }
    *key = ((Segments *)obj)->key;
    return ((Segments *)obj)->count;
}

PyObject *
mod_short_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view = {0}, kv = {0};
    Py_ssize_t pos, size, total, last, off;
    const unsigned char *b;
    PyObject *out = NULL;
    Segments *s;

    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "short_run(data, pos, segment_size, key)");
        return NULL;
    }
    if (as_ssize(args[1], &pos) < 0 || as_ssize(args[2], &size) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &kv, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    total = view.len;
    b = view.buf;
    if (size <= 0 || pos < 0 || pos >= total) {
        PyErr_SetString(PyExc_ValueError, "short_run: no segment at pos");
        goto done;
    }
    last = pos + (total - pos - 1) / size * size; /* the last segment */
    if (total - last < 1 + kv.len) {              /* too short to hold the DCID */
        out = Py_NewRef(Py_None);
        goto done;
    }
    /* (every segment holds its DCID: the last one does, the others are size long) */
    for (off = pos; off < total; off += size) {
        if ((b[off] & 0x80) || memcmp(b + off + 1, kv.buf, (size_t)kv.len) != 0) {
            out = Py_NewRef(Py_None);
            goto done;
        }
    }
    s = PyObject_New(Segments, &SegmentsType);
    if (s == NULL) {
        goto done;
    }
    s->pos = pos;
    s->size = size;
    s->total = total;
    s->count = (total - pos + size - 1) / size;
    s->key = Py_NewRef(args[3]);
    out = (PyObject *)s;
done:
    PyBuffer_Release(&kv);
    PyBuffer_Release(&view);
    return out;
}
