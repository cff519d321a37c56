/*
 * parse_frames(payload, classes) -> list | None
 *
 * The frames of a decrypted packet payload, parsed as wire/frames.parse_frames does
 * (RFC 9000 12.4, 19), when every frame is one of those a handshake and a plain 1-RTT
 * packet carry: PADDING (a run: one Padding), PING, ACK, ACK_ECN, CRYPTO, STREAM
 * (0x08-0x0f), NEW_CONNECTION_ID, CONNECTION_CLOSE (0x1c, 0x1d), HANDSHAKE_DONE, MAX_DATA
 * and MAX_STREAM_DATA (a receiver's window updates, which come with its ACKs), each well
 * formed and its type in one byte.  Returns the list of frame objects (the same
 * classes, with the same field values), or None for anything else: another frame type,
 * a frame type in more than one byte, and every malformed frame.  The caller then runs
 * parse_frames, the reference, which parses the payload or raises FrameEncodingError with
 * its frame type and message; so the result (or the error) never depends on the parser.
 *
 * classes: (Padding, Ping, Ack, Crypto, Stream, NewConnectionId, ConnectionClose,
 *           HandshakeDone, MaxData, MaxStreamData), the wire.frame_types dataclasses.  Their objects are built
 *           without a call of the generated __init__ (see make below).
 *
 * qf_parse_frames is the same on a plain buffer: KeyContext.open_frames (keys.c) parses
 * the payload it just decrypted with it.
 */
#include "native.h"

#define VARINT_MAX ((((uint64_t)1) << 62) - 1)

enum {
    C_PADDING, C_PING, C_ACK, C_CRYPTO, C_STREAM, C_NCID, C_CLOSE, C_DONE, C_MAX_DATA,
    C_MAX_STREAM_DATA, N_CLASSES
};

/* Frame objects are built by qf_build (objects.c): without their generated __init__.
 * The layouts are worked out once per classes tuple (held, so its identity stays
 * valid). */
static PyObject *layout_of = NULL; /* the classes tuple the layouts below belong to */
static QfLayout layouts[N_CLASSES];

/* The layouts of classes (a checked 10-tuple); -1 with an exception set on failure. */
static int
layouts_for(PyObject *classes)
{
    if (classes == layout_of) {
        return 0;
    }
    Py_CLEAR(layout_of);
    for (int i = 0; i < N_CLASSES; i++) {
        if (qf_layout_for(PyTuple_GET_ITEM(classes, i), &layouts[i]) < 0) {
            return -1;
        }
    }
    layout_of = Py_NewRef(classes);
    return 0;
}

/* a new reference to classes[which](*args) (stealing the n references in args, which
   may be NULL after a failed allocation: then NULL with the error set) */
static PyObject *
make(PyObject *const *classes, int which, PyObject **args, Py_ssize_t n)
{
    return qf_build(classes[which], &layouts[which], args, n);
}

static PyObject *
bytes_at(const uint8_t *b, Py_ssize_t pos, Py_ssize_t len)
{
    return PyBytes_FromStringAndSize((const char *)b + pos, len);
}

/* the tuple (lo, hi) of an ACK range (both in 0 .. 2**62-1) */
static PyObject *
range_of(int64_t lo, int64_t hi)
{
    PyObject *a = PyLong_FromLongLong(lo), *b = PyLong_FromLongLong(hi), *t = NULL;
    if (a != NULL && b != NULL && (t = PyTuple_New(2)) != NULL) {
        PyTuple_SET_ITEM(t, 0, a);
        PyTuple_SET_ITEM(t, 1, b);
        return t;
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    return NULL;
}

/* the ACK frame at b[*pos] (after its type): 1 parsed, 0 not here, -1 error */
static int
parse_ack(const uint8_t *b, Py_ssize_t n, Py_ssize_t *pos, int ecn,
          PyObject *const *classes, PyObject **frame)
{
    uint64_t largest, delay, count, first;
    Py_ssize_t p = *pos;
    if (qf_varint(b, n, &p, &largest) < 0 || qf_varint(b, n, &p, &delay) < 0 ||
        qf_varint(b, n, &p, &count) < 0 || qf_varint(b, n, &p, &first) < 0 || first > largest ||
        count > (uint64_t)(n - p) / 2) {
        return 0; /* (each further range takes two bytes at least) */
    }
    int64_t smallest = (int64_t)(largest - first);
    PyObject *ranges = PyList_New(0);
    if (ranges == NULL) {
        return -1;
    }
    PyObject *range = range_of(smallest, (int64_t)largest);
    if (range == NULL || PyList_Append(ranges, range) < 0) {
        Py_XDECREF(range);
        Py_DECREF(ranges);
        return -1;
    }
    Py_DECREF(range);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t gap, length;
        if (qf_varint(b, n, &p, &gap) < 0 || qf_varint(b, n, &p, &length) < 0) {
            Py_DECREF(ranges);
            return 0;
        }
        /* largest = smallest - gap - 2; smallest = largest - length (never below 0) */
        if ((uint64_t)smallest < gap + 2 || (uint64_t)smallest - gap - 2 < length) {
            Py_DECREF(ranges);
            return 0;
        }
        int64_t hi = smallest - (int64_t)gap - 2;
        smallest = hi - (int64_t)length;
        range = range_of(smallest, hi);
        if (range == NULL || PyList_Append(ranges, range) < 0) {
            Py_XDECREF(range);
            Py_DECREF(ranges);
            return -1;
        }
        Py_DECREF(range);
    }
    PyObject *counts;
    if (ecn) {
        uint64_t ect0, ect1, ce;
        if (qf_varint(b, n, &p, &ect0) < 0 || qf_varint(b, n, &p, &ect1) < 0 ||
            qf_varint(b, n, &p, &ce) < 0) {
            Py_DECREF(ranges);
            return 0;
        }
        counts = Py_BuildValue("(KKK)", (unsigned long long)ect0, (unsigned long long)ect1,
                               (unsigned long long)ce);
    } else {
        counts = Py_NewRef(Py_None);
    }
    PyObject *args[3] = {ranges, PyLong_FromUnsignedLongLong(delay), counts};
    *frame = make(classes, C_ACK, args, 3);
    *pos = p;
    return *frame == NULL ? -1 : 1;
}

int
qf_frame_classes_ok(PyObject *classes)
{
    if (!PyTuple_Check(classes) || PyTuple_GET_SIZE(classes) != N_CLASSES) {
        PyErr_SetString(PyExc_TypeError, "parse_frames: classes must be a 10-tuple");
        return 0;
    }
    return 1;
}

PyObject *
qf_parse_frames(const uint8_t *b, Py_ssize_t n, PyObject *classes_tuple)
{
    PyObject *const *classes = &PyTuple_GET_ITEM(classes_tuple, 0);
    if (layouts_for(classes_tuple) < 0) {
        return NULL;
    }
    PyObject *frames = PyList_New(0);
    if (frames == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    while (pos < n) {
        int ftype = b[pos];
        PyObject *frame = NULL;
        pos += 1;
        if (ftype == 0x00) { /* PADDING: the run of zero bytes, one frame */
            Py_ssize_t start = pos - 1;
            while (pos < n && b[pos] == 0) {
                pos++;
            }
            PyObject *a[1] = {PyLong_FromSsize_t(pos - start)};
            frame = make(classes, C_PADDING, a, 1);
        } else if (ftype == 0x01) {
            frame = make(classes, C_PING, NULL, 0);
        } else if (ftype == 0x02 || ftype == 0x03) {
            int rc = parse_ack(b, n, &pos, ftype == 0x03, classes, &frame);
            if (rc == 0) {
                goto not_here;
            }
        } else if (ftype == 0x06) { /* CRYPTO */
            uint64_t offset, length;
            if (qf_varint(b, n, &pos, &offset) < 0 || qf_varint(b, n, &pos, &length) < 0 ||
                offset + length > VARINT_MAX || length > (uint64_t)(n - pos)) {
                goto not_here;
            }
            PyObject *a[2] = {PyLong_FromUnsignedLongLong(offset),
                              bytes_at(b, pos, (Py_ssize_t)length)};
            pos += (Py_ssize_t)length;
            frame = make(classes, C_CRYPTO, a, 2);
        } else if (ftype >= 0x08 && ftype <= 0x0F) { /* STREAM */
            uint64_t sid, offset = 0, length;
            if (qf_varint(b, n, &pos, &sid) < 0 ||
                ((ftype & 0x04) && qf_varint(b, n, &pos, &offset) < 0)) {
                goto not_here;
            }
            if (ftype & 0x02) {
                if (qf_varint(b, n, &pos, &length) < 0 || length > (uint64_t)(n - pos)) {
                    goto not_here;
                }
            } else {
                length = (uint64_t)(n - pos);
            }
            if (offset + length > VARINT_MAX) {
                goto not_here;
            }
            PyObject *a[4] = {PyLong_FromUnsignedLongLong(sid),
                              PyLong_FromUnsignedLongLong(offset),
                              bytes_at(b, pos, (Py_ssize_t)length),
                              Py_NewRef((ftype & 0x01) ? Py_True : Py_False)};
            pos += (Py_ssize_t)length;
            frame = make(classes, C_STREAM, a, 4);
        } else if (ftype == 0x18) { /* NEW_CONNECTION_ID */
            uint64_t seq, retire;
            if (qf_varint(b, n, &pos, &seq) < 0 || qf_varint(b, n, &pos, &retire) < 0 ||
                retire > seq || pos >= n) {
                goto not_here;
            }
            Py_ssize_t cid_len = b[pos];
            if (cid_len < 1 || cid_len > 20 || pos + 1 + cid_len + 16 > n) {
                goto not_here;
            }
            PyObject *a[4] = {PyLong_FromUnsignedLongLong(seq),
                              PyLong_FromUnsignedLongLong(retire),
                              bytes_at(b, pos + 1, cid_len),
                              bytes_at(b, pos + 1 + cid_len, 16)};
            pos += 1 + cid_len + 16;
            frame = make(classes, C_NCID, a, 4);
        } else if (ftype == 0x1C || ftype == 0x1D) { /* CONNECTION_CLOSE */
            uint64_t code, frame_type = 0, length;
            if (qf_varint(b, n, &pos, &code) < 0 ||
                (ftype == 0x1C && qf_varint(b, n, &pos, &frame_type) < 0) ||
                qf_varint(b, n, &pos, &length) < 0 || length > (uint64_t)(n - pos)) {
                goto not_here;
            }
            PyObject *a[3] = {PyLong_FromUnsignedLongLong(code),
                              ftype == 0x1C ? PyLong_FromUnsignedLongLong(frame_type)
                                            : Py_NewRef(Py_None),
                              bytes_at(b, pos, (Py_ssize_t)length)};
            pos += (Py_ssize_t)length;
            frame = make(classes, C_CLOSE, a, 3);
        } else if (ftype == 0x1E) {
            frame = make(classes, C_DONE, NULL, 0);
        } else if (ftype == 0x10) { /* MAX_DATA */
            uint64_t maximum;
            if (qf_varint(b, n, &pos, &maximum) < 0) {
                goto not_here;
            }
            PyObject *a[1] = {PyLong_FromUnsignedLongLong(maximum)};
            frame = make(classes, C_MAX_DATA, a, 1);
        } else if (ftype == 0x11) { /* MAX_STREAM_DATA */
            uint64_t sid, maximum;
            if (qf_varint(b, n, &pos, &sid) < 0 || qf_varint(b, n, &pos, &maximum) < 0) {
                goto not_here;
            }
            PyObject *a[2] = {PyLong_FromUnsignedLongLong(sid),
                              PyLong_FromUnsignedLongLong(maximum)};
            frame = make(classes, C_MAX_STREAM_DATA, a, 2);
        } else {
            goto not_here;
        }
        if (frame == NULL) {
            goto error;
        }
        int rc = PyList_Append(frames, frame);
        Py_DECREF(frame);
        if (rc < 0) {
            goto error;
        }
    }
    return frames;
not_here:
    Py_DECREF(frames);
    Py_RETURN_NONE;
error:
    Py_DECREF(frames);
    return NULL;
}

PyObject *
mod_parse_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_frames(payload, classes: 10-tuple)");
        return NULL;
    }
    if (!qf_frame_classes_ok(args[1])) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *frames = qf_parse_frames((const uint8_t *)view.buf, view.len, args[1]);
    PyBuffer_Release(&view);
    return frames;
}
