/*
 * quicflow.crypto._native -- coalesce: open_run(table, buf, packets), the receiver's batch
 * path. Opens a run of short-header packets exactly like open() (same key-phase and
 * largest_pn evolution, packet by packet in order) and coalesces consecutive packets that
 * are each exactly one STREAM frame (+ PADDING) of the same stream, contiguous in offset,
 * into one entry whose data is built in one bytes object (see offload.RunEntry):
 *   (0, first_pn, count, stream_id, offset, data, fin)
 *   (1, pn, payload, phase_changed)
 *   (2, index)
 * Returns (entries, failures).
 *
 * Memory: a run's packets are decrypted straight into the run's bytes object, at its tail;
 * the STREAM frame header is then squeezed out with a memmove. The object is allocated for
 * the rest of the buffer when the run grows past its first packet and shrunk in place
 * (_PyBytes_Resize) when the run ends. A packet that does not continue the run is copied
 * out first (once per run boundary); other packets decrypt into their own payload object.
 */
#include "native.h"

#define STREAM_DATA_MAX (((uint64_t)1 << 62) - 1)

typedef struct {
    uint64_t sid;
    uint64_t offset;
    Py_ssize_t start; /* data start in the payload */
    Py_ssize_t end;   /* data end in the payload */
    int fin;
} StreamFrame;

static inline int
read_varint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos, uint64_t *value)
{
    Py_ssize_t size, k;
    uint64_t v;
    if (*pos >= n) {
        return 0;
    }
    size = (Py_ssize_t)1 << (p[*pos] >> 6);
    if (*pos + size > n) {
        return 0;
    }
    v = p[*pos] & 0x3F;
    for (k = 1; k < size; k++) {
        v = (v << 8) | p[*pos + k];
    }
    *pos += size;
    *value = v;
    return 1;
}

/* 1 with *f filled when p[0:n] is exactly one STREAM frame followed only by PADDING, else
 * 0 (mirrors offload.single_stream_frame). */
static int
parse_stream(const unsigned char *p, Py_ssize_t n, StreamFrame *f)
{
    Py_ssize_t pos = 1, k;
    uint64_t len;
    unsigned char type;

    if (n < 2 || (p[0] & 0xF8) != 0x08) {
        return 0;
    }
    type = p[0];
    if (!read_varint(p, n, &pos, &f->sid)) {
        return 0;
    }
    f->offset = 0;
    if ((type & 0x04) && !read_varint(p, n, &pos, &f->offset)) {
        return 0;
    }
    if (type & 0x02) {
        if (!read_varint(p, n, &pos, &len) || len > (uint64_t)(n - pos)) {
            return 0;
        }
        f->end = pos + (Py_ssize_t)len;
        for (k = f->end; k < n; k++) {
            if (p[k] != 0) {
                return 0; /* more frames follow */
            }
        }
    } else {
        f->end = n;
    }
    f->start = pos;
    /* offset <= 2**62 - 1 (a varint) and the length fits a packet: no overflow */
    if (f->offset + (uint64_t)(f->end - pos) > STREAM_DATA_MAX) {
        return 0;
    }
    f->fin = type & 0x01;
    return 1;
}

typedef struct {
    PyObject *data; /* the run's bytes (refcount 1), NULL when no run is open */
    Py_ssize_t cap; /* its current size */
    Py_ssize_t tail; /* data bytes so far */
    int64_t first_pn;
    int64_t last_pn;
    uint64_t sid;
    uint64_t offset;
    uint64_t next_offset;
} Run;

/* Append a new tuple of n items (references stolen; NULL items -> error) to entries. */
static int
append_entry(PyObject *entries, Py_ssize_t n, PyObject **items)
{
    Py_ssize_t k;
    int rc = -1;
    PyObject *t = NULL;

    for (k = 0; k < n; k++) {
        if (items[k] == NULL) {
            goto done;
        }
    }
    t = PyTuple_New(n);
    if (t == NULL) {
        goto done;
    }
    for (k = 0; k < n; k++) {
        PyTuple_SET_ITEM(t, k, items[k]);
        items[k] = NULL;
    }
    rc = PyList_Append(entries, t);
done:
    for (k = 0; k < n; k++) {
        Py_XDECREF(items[k]);
    }
    Py_XDECREF(t);
    return rc;
}

/* Close the open run (if any) into a kind-0 entry. 0, or -1 with an exception set. */
static int
flush_run(Run *run, PyObject *entries, int fin)
{
    PyObject *items[7];

    if (run->data == NULL) {
        return 0;
    }
    if (run->tail != run->cap && _PyBytes_Resize(&run->data, run->tail) < 0) {
        run->data = NULL;
        return -1;
    }
    items[0] = PyLong_FromLong(0);
    items[1] = PyLong_FromLongLong(run->first_pn);
    items[2] = PyLong_FromLongLong(run->last_pn - run->first_pn + 1);
    items[3] = PyLong_FromUnsignedLongLong(run->sid);
    items[4] = PyLong_FromUnsignedLongLong(run->offset);
    items[5] = run->data;
    items[6] = Py_NewRef(fin ? Py_True : Py_False);
    run->data = NULL;
    return append_entry(entries, 7, items);
}

/* Close the open run (if any) and append (kind, value) (value: a new reference, stolen;
 * NULL -> error): (2, index) for a packet that failed to open, (3, pn) for one that opened
 * with its reserved header bits set. 0, or -1 with an exception set. */
static int
append_pair(Run *run, PyObject *entries, long kind, PyObject *value)
{
    PyObject *items[2];
    if (flush_run(run, entries, 0) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    items[0] = PyLong_FromLong(kind);
    items[1] = value;
    return append_entry(entries, 2, items);
}

/* Start a run from a packet's own plaintext object (stolen). 0 or -1. */
static int
start_run(Run *run, PyObject *entries, PyObject *plain, int64_t pn, const StreamFrame *f)
{
    char *p = PyBytes_AS_STRING(plain);
    Py_ssize_t len = f->end - f->start;

    memmove(p, p + f->start, (size_t)len);
    run->data = plain;
    run->cap = PyBytes_GET_SIZE(plain);
    run->tail = len;
    run->first_pn = run->last_pn = pn;
    run->sid = f->sid;
    run->offset = f->offset;
    run->next_offset = f->offset + (uint64_t)len;
    return f->fin ? flush_run(run, entries, 1) : 0;
}

PyObject *
mod_open_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *table, *seq = NULL, *entries = NULL, *out, *key = NULL, *empty;
    CidCache cache = {0};
    CidState *state;
    Py_buffer view = {0};
    Py_ssize_t n, i, failures = 0, hdr_cap = HDR_LOCAL, strided;
    unsigned char local[HDR_LOCAL], *hdr = local;
    Run run = {0};
    int ok;

    (void)module;
    /* packets from short_run (a Segments run): walked by its stride, one cid lookup */
    strided = nargs == 3 ? qf_segments(args[2], &key) : -1;
    if (strided >= 0) {
        PyObject *plain_args[3];
        empty = PyTuple_New(0);
        if (empty == NULL) {
            return NULL;
        }
        plain_args[0] = args[0];
        plain_args[1] = args[1];
        plain_args[2] = empty;
        ok = batch_args(plain_args, 3, 3, "", PyBUF_SIMPLE, &table, &view, &seq);
        Py_DECREF(empty);
    } else {
        ok = batch_args(args, nargs, 3, "open_run(table, buf, packets)", PyBUF_SIMPLE, &table,
                        &view, &seq);
    }
    if (ok < 0) {
        return NULL;
    }
    n = strided >= 0 ? strided : PySequence_Fast_GET_SIZE(seq);
    entries = PyList_New(0);
    if (entries == NULL) {
        goto error;
    }
    if (strided >= 0) { /* (what open_descriptor's cache holds after the first entry) */
        cache.state = lookup(table, key);
        if (cache.state == NULL && PyErr_Occurred()) {
            goto error;
        }
        if (cache.state != NULL) {
            cache.cid_len = PyBytes_Check(key) ? PyBytes_GET_SIZE(key) : PyObject_Length(key);
            if (cache.cid_len < 0) {
                goto error;
            }
        }
        cache.last_cid = key;
    }
    for (i = 0; i < n; i++) {
        PyObject *plain = NULL, *items[4];
        Py_ssize_t offset, length;
        unsigned char *dest;
        StreamFrame frame;
        OpenPrep op;
        int rc, is_stream;

        if (strided >= 0) {
            qf_segment_at(args[2], i, &offset, &length);
        } else if (open_descriptor(table, PySequence_Fast_GET_ITEM(seq, i), &offset, &length,
                                   &cache) < 0) {
            goto error;
        }
        state = cache.state;
        if (state == NULL) {
            failures++;
            if (append_pair(&run, entries, 2, PyLong_FromSsize_t(i)) < 0) {
                goto error;
            }
            continue;
        }
        if (cache.cid_len + 5 > hdr_cap) {
            unsigned char *big = PyMem_Realloc(hdr == local ? NULL : hdr,
                                               (size_t)cache.cid_len + 5);
            if (big == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            hdr = big;
            hdr_cap = cache.cid_len + 5;
        }
        rc = open_prepare(state, view.buf, view.len, offset, length, cache.cid_len, hdr, &op);
        if (rc < 0) {
            goto error;
        }
        if (rc > 0) {
            failures++;
            if (append_pair(&run, entries, 2, PyLong_FromSsize_t(i)) < 0) {
                goto error;
            }
            continue;
        }
        /* destination: the open run's tail, else the packet's own payload object */
        if (run.data != NULL) {
            if (run.tail + op.plen > run.cap) {
                Py_ssize_t cap = run.tail + (view.len - offset);
                if (cap < run.tail + op.plen) {
                    cap = run.tail + op.plen;
                }
                if (cap < run.cap + run.cap / 2) {
                    cap = run.cap + run.cap / 2;
                }
                if (_PyBytes_Resize(&run.data, cap) < 0) {
                    run.data = NULL;
                    goto error;
                }
                run.cap = cap;
            }
            dest = (unsigned char *)PyBytes_AS_STRING(run.data) + run.tail;
        } else {
            plain = PyBytes_FromStringAndSize(NULL, op.plen);
            if (plain == NULL) {
                goto error;
            }
            dest = (unsigned char *)PyBytes_AS_STRING(plain);
        }
        rc = open_finish(state, view.buf, hdr, &op, dest);
        if (rc != 0) {
            Py_XDECREF(plain);
            if (rc < 0) {
                goto error;
            }
            failures++;
            if (append_pair(&run, entries, 2, PyLong_FromSsize_t(i)) < 0) {
                goto error;
            }
            continue;
        }
        if (hdr[0] & 0x18) { /* reserved bits set (RFC 9000 17.3.1): the connection's error */
            Py_XDECREF(plain);
            if (append_pair(&run, entries, 3, PyLong_FromLongLong(op.pn)) < 0) {
                goto error;
            }
            continue;
        }
        is_stream = !op.rotate && parse_stream(dest, op.plen, &frame);
        if (run.data != NULL) {
            if (is_stream && op.pn == run.last_pn + 1 && frame.sid == run.sid &&
                frame.offset == run.next_offset) {
                Py_ssize_t len = frame.end - frame.start;
                memmove(dest, dest + frame.start, (size_t)len);
                run.tail += len;
                run.last_pn = op.pn;
                run.next_offset += (uint64_t)len;
                if (frame.fin && flush_run(&run, entries, 1) < 0) {
                    goto error;
                }
                continue;
            }
            /* does not continue the run: take the plaintext out before closing it */
            plain = PyBytes_FromStringAndSize((const char *)dest, op.plen);
            if (plain == NULL || flush_run(&run, entries, 0) < 0) {
                Py_XDECREF(plain);
                goto error;
            }
        }
        if (is_stream) {
            if (start_run(&run, entries, plain, op.pn, &frame) < 0) {
                goto error;
            }
            continue;
        }
        items[0] = PyLong_FromLong(1);
        items[1] = PyLong_FromLongLong(op.pn);
        items[2] = plain;
        items[3] = Py_NewRef(op.rotate ? Py_True : Py_False);
        if (append_entry(entries, 4, items) < 0) {
            goto error;
        }
    }
    if (flush_run(&run, entries, 0) < 0) {
        goto error;
    }
    if (hdr != local) {
        PyMem_Free(hdr);
    }
    Py_DECREF(seq);
    PyBuffer_Release(&view);
    out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(entries);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, entries);
    PyTuple_SET_ITEM(out, 1, PyLong_FromSsize_t(failures));
    return out;
error:
    Py_XDECREF(run.data);
    if (hdr != local) {
        PyMem_Free(hdr);
    }
    Py_XDECREF(entries);
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return NULL;
}
