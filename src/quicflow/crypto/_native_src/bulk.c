/*
 * quicflow.crypto._native -- bulk: build_bulk(conn, now, buf, bounds, seal, max_count),
 * the C twin of transport/bulk.py's build_bulk_python (the reference, and the fallback):
 * a bulk send turn's bookkeeping and its engine call in one call. It reads the window,
 * flow control and the stream, asks the pacer (Pacer.run_budget, capacity, _refill), seals
 * the run (seal_stream_run, its engine counters), records the batch (SentPacket,
 * LossDetection.on_packet_sent, CongestionControl.on_sent), consumes the pacer's tokens
 * (Pacer.consume), takes the stream off the queue when bulk.py would, counts, and asks
 * the pacer again after a full run (bulk.py's _pace_after_run): the same decisions and
 * the same state as the Python code, in the same order, without its ~25 Python frames.
 * The pacer's twin is pacer.c; the field helpers are fields.c.
 *
 * Whatever this file does not handle goes to the Python twin before anything changed:
 * another engine than the native one, a run that may reach the end of its send-buffer
 * chunk with more data after it (the twin's loop goes on into the next chunk), a field of
 * an unexpected type (e.g. an int where the pacer keeps floats), values beyond 2**61, an
 * empty queue, a missing stream, a packet number too far ahead for 4 bytes (the twin
 * raises). bulk_setup(python_twin, SentPacket, effective_idle, R_STREAM_RUN,
 * Epoch.ONE_RTT, engine_type) must have been called (bulk.py does, at import); before
 * that, build_bulk raises RuntimeError. tests/test_bulk_native.py runs whole downloads
 * through both and compares the sender's state after every call.
 */
#include "native.h"

static PyObject *twin, *sent_packet_cls, *effective_idle, *r_stream_run, *one_rtt,
    *engine_type;

#define NAMES(X)                                                                          \
    X(max_datagram_size) X(loss) X(cc) X(cwnd) X(bytes_in_flight) X(send_queue) X(streams) \
    X(send) X(flow) X(next_offset) X(write_offset) X(max_data) X(peer_max_data)           \
    X(data_sent) X(rtt) X(smoothed_rtt) X(pacer) X(pacer_deadline) X(spaces) X(next_pn)  \
    X(largest_acked) X(peer_cid) X(engine) X(_sealers) X(seal_key) X(chunks)              \
    X(chunk_ends) X(fin_written) X(fin_sent) X(sealed) X(seal_calls) X(discarded)         \
    X(largest_sent) X(sent) X(packets_sent) X(last_ack_eliciting_time)                    \
    X(ack_eliciting_in_flight) X(timer_anchor) X(reset_code) X(lost) X(starts)            \
    X(fin_lost) X(blocked_sent_at) X(counters) X(datagrams_sent) X(bytes_sent)            \
    X(last_ack_eliciting_sent_after_receive) X(idle_deadline) X(on_packet_sent)

#define DECLARE(n) static PyObject *s_##n;
NAMES(DECLARE)
#undef DECLARE

PyObject *
mod_bulk_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "bulk_setup(python_twin, SentPacket, effective_idle, R_STREAM_RUN, "
                        "ONE_RTT, engine_type)");
        return NULL;
    }
#define INTERN(n)                                                                         \
    if (s_##n == NULL && (s_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return NULL;                                                                      \
    }
    NAMES(INTERN)
#undef INTERN
    if (qf_pacer_setup() < 0) {
        return NULL;
    }
    Py_XSETREF(twin, Py_NewRef(args[0]));
    Py_XSETREF(sent_packet_cls, Py_NewRef(args[1]));
    Py_XSETREF(effective_idle, Py_NewRef(args[2]));
    Py_XSETREF(r_stream_run, Py_NewRef(args[3]));
    Py_XSETREF(one_rtt, Py_NewRef(args[4]));
    Py_XSETREF(engine_type, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

/* bulk.py's _run_want: *end and the bytes a run would take (0: none) */
static void
run_want(long long start, long long write_offset, long long max_data, long long peer_max,
         long long data_sent, long long cwnd_room, long long max_count, long long mds,
         long long *end, long long *want)
{
    long long e = write_offset, w, n;
    if (max_data < e) {
        e = max_data;
    }
    if (start + peer_max - data_sent < e) {
        e = start + peer_max - data_sent;
    }
    *end = e;
    if (e <= start) {
        *want = 0;
        return;
    }
    n = e - start;
    w = cwnd_room;
    if (max_count * mds < w) {
        w = max_count * mds;
    }
    if (n + n / 1024 * 64 + mds < w) {
        w = n + n / 1024 * 64 + mds;
    }
    *want = w;
}

static int
bit_length(unsigned long long v)
{
    int n = 0;
    while (v) {
        n++;
        v >>= 1;
    }
    return n;
}

/* ------------------------------------------------------------------ build_bulk */

typedef struct {
    PyObject *loss, *cc, *queue, *sid, *send, *flow, *pacer, *space, *dcid, *engine,
        *table, *seal_key, *chunk, *rtt, *lspace, *counters;
} Refs;

static void
refs_clear(Refs *r)
{
    PyObject **p = (PyObject **)r;
    size_t i;
    for (i = 0; i < sizeof(Refs) / sizeof(PyObject *); i++) {
        Py_CLEAR(p[i]);
    }
}

/* send.chunk_at(start): the chunk, the index of start in it, the offset where it ends */
static int
chunk_at(PyObject *send, long long start, PyObject **chunk, long long *at, long long *end)
{
    PyObject *ends = NULL, *chunks = NULL;
    Py_ssize_t lo = 0, hi, mid;
    long long v, clen;
    int r = QF_FALLBACK;
    if (qf_get_obj(send, s_chunk_ends, &ends) < 0 || qf_get_obj(send, s_chunks, &chunks) < 0) {
        r = -1;
        goto done;
    }
    if (!PyList_CheckExact(ends) || !PyList_CheckExact(chunks) ||
        PyList_GET_SIZE(ends) != PyList_GET_SIZE(chunks)) {
        goto done;
    }
    hi = PyList_GET_SIZE(ends);
    while (lo < hi) { /* bisect_right */
        mid = (lo + hi) / 2;
        if ((r = qf_as_ll(PyList_GET_ITEM(ends, mid), &v)) != 0) {
            goto done;
        }
        r = QF_FALLBACK;
        if (start < v) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if (lo >= PyList_GET_SIZE(ends)) {
        goto done;
    }
    if ((r = qf_as_ll(PyList_GET_ITEM(ends, lo), end)) != 0) {
        goto done;
    }
    *chunk = PyList_GET_ITEM(chunks, lo);
    if (PyBytes_CheckExact(*chunk)) {
        clen = PyBytes_GET_SIZE(*chunk);
    } else if (PyByteArray_CheckExact(*chunk)) {
        clen = PyByteArray_GET_SIZE(*chunk);
    } else {
        r = QF_FALLBACK;
        goto done;
    }
    Py_INCREF(*chunk);
    *at = start - (*end - clen);
    r = 0;
done:
    Py_XDECREF(ends);
    Py_XDECREF(chunks);
    return r;
}

/* SendStream.has_data_to_send, on the stream's state after the run */
static int
has_data_to_send(PyObject *send, long long next, long long write_offset, long long max_data,
                 int fin_written, int fin_sent)
{
    PyObject *v, *starts;
    int t;
    if (qf_get_obj(send, s_reset_code, &v) < 0) {
        return -1;
    }
    t = v != Py_None;
    Py_DECREF(v);
    if (t) {
        return 0;
    }
    if (qf_get_obj(send, s_lost, &v) < 0) {
        return -1;
    }
    starts = qf_field_get(v, s_starts);
    Py_DECREF(v);
    if (starts == NULL) {
        return -1;
    }
    t = PyObject_IsTrue(starts);
    Py_DECREF(starts);
    if (t != 0) {
        return t; /* 1, or -1 */
    }
    if (qf_get_bool(send, s_fin_lost, &t) < 0) {
        return -1;
    }
    if (t) {
        return 1;
    }
    if (next < write_offset) {
        return next < max_data;
    }
    return fin_written && !fin_sent;
}

PyObject *
mod_build_bulk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *conn, *nowobj, *buf, *bounds, *stream, *streams, *spaces, *v;
    PyObject *seal_args[15] = {NULL}, *res = NULL, *pkt = NULL, *frames = NULL, *rec = NULL;
    Refs R = {NULL};
    QfPacer P, Q;
    double now, srtt, later = 0.0;
    long long mds, cwnd, bif, cwnd_room, max_count, start, write_offset, max_data, peer_max,
        data_sent, end, want, pacer_room = 0, count, pn, la, n, pn_len, header_len,
        sid_len, capacity, off_len, frame_head, data_cap, unit, at, chunk_end, sidv, built,
        offset, size, packet_start, k, lsent, blocked_sent_at, run_end;
    int r, fin_written, fin, paced, has, discarded, flag;

    at = chunk_end = 0;

    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "build_bulk(conn, now, buf, bounds, seal, max_count)");
        return NULL;
    }
    if (twin == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bulk_setup was not called");
        return NULL;
    }
    conn = args[0];
    nowobj = args[1];
    buf = args[2];
    bounds = args[3];

    /* -- everything read, nothing changed yet: the twin may still take it all over */
    r = QF_FALLBACK;
    if (!PyFloat_CheckExact(nowobj) || !PyByteArray_CheckExact(buf) ||
        !PyList_CheckExact(bounds)) {
        goto unread;
    }
    now = PyFloat_AS_DOUBLE(nowobj);
    QF_READ(r, qf_as_ll(args[5], &max_count));
    QF_READ(r, qf_get_obj(conn, s_engine, &R.engine));
    if ((PyObject *)Py_TYPE(R.engine) != engine_type) {
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_ll(conn, s_max_datagram_size, &mds));
    if (mds <= 0 || max_count < 1 || mds > (1 << 20) || max_count > (1 << 20)) {
        /* (never so: the twin's arithmetic decides; products below stay in 64 bits) */
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_obj(conn, s_loss, &R.loss));
    QF_READ(r, qf_get_obj(R.loss, s_cc, &R.cc));
    QF_READ(r, qf_get_ll(R.cc, s_cwnd, &cwnd));
    QF_READ(r, qf_get_ll(R.cc, s_bytes_in_flight, &bif));
    cwnd_room = cwnd - bif;
    if (cwnd_room < mds) {
        refs_clear(&R);
        return PyLong_FromLong(0);
    }
    QF_READ(r, qf_get_obj(conn, s_send_queue, &R.queue));
    r = QF_FALLBACK;
    if (!PyList_CheckExact(R.queue) || PyList_GET_SIZE(R.queue) < 1) {
        goto unread;
    }
    R.sid = Py_NewRef(PyList_GET_ITEM(R.queue, 0));
    QF_READ(r, qf_as_ll(R.sid, &sidv));
    if (sidv < 0) {
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_obj(conn, s_streams, &streams));
    r = QF_FALLBACK;
    stream = PyDict_CheckExact(streams) ? PyDict_GetItemWithError(streams, R.sid) : NULL;
    Py_DECREF(streams);
    if (stream == NULL) {
        r = PyErr_Occurred() ? -1 : QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_obj(stream, s_send, &R.send)); /* (stream: borrowed from the dict, in use) */
    if (R.send == Py_None) {
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_obj(conn, s_flow, &R.flow));
    QF_READ(r, qf_get_ll(R.send, s_next_offset, &start));
    QF_READ(r, qf_get_ll(R.send, s_write_offset, &write_offset));
    QF_READ(r, qf_get_ll(R.send, s_max_data, &max_data));
    QF_READ(r, qf_get_ll(R.flow, s_peer_max_data, &peer_max));
    QF_READ(r, qf_get_ll(R.flow, s_data_sent, &data_sent));
    run_want(start, write_offset, max_data, peer_max, data_sent, cwnd_room, max_count, mds,
             &end, &want);
    if (!want) {
        refs_clear(&R);
        return PyLong_FromLong(0);
    }
    QF_READ(r, qf_get_obj(R.loss, s_rtt, &R.rtt));
    QF_READ(r, qf_get_float(R.rtt, s_smoothed_rtt, &srtt));
    QF_READ(r, qf_get_obj(conn, s_pacer, &R.pacer));
    QF_READ(r, qf_pacer_load(R.pacer, &P));
    QF_READ(r, qf_get_obj(conn, s_spaces, &spaces));
    r = QF_FALLBACK;
    if (PyList_CheckExact(spaces) && PyList_GET_SIZE(spaces) == 3) {
        R.space = Py_NewRef(PyList_GET_ITEM(spaces, 2));
        r = 0;
    }
    Py_DECREF(spaces);
    QF_READ(r, r);
    QF_READ(r, qf_get_ll(R.space, s_next_pn, &pn));
    QF_READ(r, qf_get_ll(R.space, s_largest_acked, &la));
    if (pn > ((long long)1 << 61)) { /* (2 * packets unacknowledged stays in 64 bits) */
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_obj(conn, s_peer_cid, &R.dcid));
    QF_READ(r, qf_get_obj(R.engine, s__sealers, &R.table));
    QF_READ(r, qf_get_obj(conn, s_seal_key, &R.seal_key));
    QF_READ(r, qf_get_bool(R.send, s_fin_written, &fin_written));
    r = QF_FALLBACK;
    if (!PyBytes_CheckExact(R.dcid)) {
        goto unread;
    }
    QF_READ(r, qf_get_obj(R.loss, s_spaces, &spaces));
    r = QF_FALLBACK;
    if (PyList_CheckExact(spaces) && PyList_GET_SIZE(spaces) == 3) {
        R.lspace = Py_NewRef(PyList_GET_ITEM(spaces, 2));
        r = 0;
    }
    Py_DECREF(spaces);
    QF_READ(r, r);
    QF_READ(r, qf_get_obj(conn, s_counters, &R.counters));

    /* the pacer's answer and the run's shape, on a copy of the pacer's state: a run that
     * may go on into the send buffer's next chunk is the twin's (its loop), decided
     * before anything changed */
    Q = P;
    paced = qf_pacer_run_budget(&Q, now, srtt, cwnd, want, &pacer_room, &later);
    count = data_cap = pn_len = header_len = frame_head = off_len = 0;
    if (!paced) {
        count = max_count;
        if (cwnd_room / mds < count) {
            count = cwnd_room / mds;
        }
        k = pacer_room / mds;
        if (k < 1) {
            k = 1;
        }
        if (k < count) {
            count = k;
        }
        /* encode_packet_number(pn + count, largest acked or None)'s length (RFC 9000
         * A.2); more than 4 bytes: the twin raises its ValueError */
        n = la >= 0 ? pn + count - la : pn + count + 1;
        if (n < 1) {
            n = 1;
        }
        pn_len = (bit_length((unsigned long long)(2 * n - 1)) + 7) >> 3;
        if (pn_len < 1) {
            pn_len = 1;
        } else if (pn_len > 4) {
            QF_READ(r, QF_FALLBACK);
        }
        header_len = 1 + PyBytes_GET_SIZE(R.dcid) + pn_len;
        sid_len = qf_varint_len((uint64_t)sidv);
        capacity = mds - header_len - 16;
        off_len = qf_varint_len((uint64_t)end);
        frame_head = 1 + sid_len + off_len + 2;
        data_cap = capacity - frame_head;
        if (data_cap > 0) {
            QF_READ(r, chunk_at(R.send, start, &R.chunk, &at, &chunk_end));
            if (end > chunk_end && start + count * data_cap >= chunk_end) {
                QF_READ(r, QF_FALLBACK);
            }
        }
    }

    /* -- from here on, the state changes as the Python code changes it */
    P = Q;
    if (qf_pacer_store(R.pacer, &P) < 0) {
        goto error;
    }
    if (paced) {
        if (qf_set_float(conn, s_pacer_deadline, later) < 0) {
            goto error;
        }
        refs_clear(&R);
        return PyLong_FromLong(-1);
    }
    if (qf_field_set(conn, s_pacer_deadline, Py_None) < 0) {
        goto error;
    }
    if (data_cap <= 0) {
        refs_clear(&R);
        return PyLong_FromLong(0);
    }
    run_end = end < chunk_end ? end : chunk_end;
    unit = header_len + frame_head + data_cap + 16;

    /* the engine call (NativeOffloadEngine.seal_stream_run) */
    packet_start = PyByteArray_GET_SIZE(buf);
    seal_args[0] = Py_NewRef(R.table);
    seal_args[1] = Py_NewRef(buf);
    seal_args[2] = Py_NewRef(R.seal_key);
    seal_args[3] = PyLong_FromLongLong(pn);
    seal_args[4] = PyLong_FromLongLong(pn_len);
    seal_args[5] = Py_NewRef(R.sid);
    seal_args[6] = Py_NewRef(R.chunk);
    seal_args[7] = PyLong_FromLongLong(at);
    seal_args[8] = PyLong_FromLongLong(at + run_end - start);
    seal_args[9] = PyLong_FromLongLong(start);
    seal_args[10] = PyLong_FromLongLong(off_len);
    seal_args[11] = PyLong_FromLongLong(data_cap);
    seal_args[12] = PyLong_FromLongLong(count);
    seal_args[13] = Py_NewRef(fin_written && run_end == write_offset ? Py_True : Py_False);
    seal_args[14] = Py_NewRef(R.dcid);
    for (k = 0; k < 15; k++) {
        if (seal_args[k] == NULL) {
            goto error;
        }
    }
    res = mod_seal_stream_run(NULL, seal_args, 15);
    if (res == NULL) {
        goto error;
    }
    built = PyLong_AsLongLong(res);
    Py_CLEAR(res);
    if (built == -1 && PyErr_Occurred()) {
        goto error;
    }
    if (qf_add_attr(R.engine, s_sealed, built) < 0 || qf_add_attr(R.engine, s_seal_calls, 1) < 0) {
        goto error;
    }
    if (!built) { /* cannot happen (count > 0, data waits); nothing was appended */
        refs_clear(&R);
        for (k = 0; k < 15; k++) {
            Py_XDECREF(seal_args[k]);
        }
        return PyLong_FromLong(0);
    }
    offset = start + built * data_cap;
    if (run_end < offset) {
        offset = run_end;
    }
    fin = fin_written && offset == write_offset;
    if (fin && qf_field_set(R.send, s_fin_sent, Py_True) < 0) {
        goto error;
    }
    size = PyByteArray_GET_SIZE(buf) - packet_start;
    for (k = 1; k < built; k++) {
        v = PyLong_FromLongLong(packet_start + k * unit);
        if (v == NULL || PyList_Append(bounds, v) < 0) {
            Py_XDECREF(v);
            goto error;
        }
        Py_DECREF(v);
    }
    v = PyLong_FromSsize_t(PyByteArray_GET_SIZE(buf));
    if (v == NULL || PyList_Append(bounds, v) < 0) {
        Py_XDECREF(v);
        goto error;
    }
    Py_DECREF(v);

    /* the record: SentPacket(pn, now, size, True, True, ONE_RTT, [(R_STREAM_RUN, sid,
     * start, data_cap, offset - start, int(fin))], built, unit) */
    rec = Py_BuildValue("(OOLLLi)", r_stream_run, R.sid, start, data_cap, offset - start,
                        fin);
    if (rec == NULL || (frames = PyList_New(1)) == NULL) {
        goto error;
    }
    PyList_SET_ITEM(frames, 0, rec);
    rec = NULL;
    {
        PyObject *pargs[9];
        int ok = 1;
        pargs[0] = seal_args[3]; /* pn */
        pargs[1] = nowobj;
        pargs[2] = PyLong_FromLongLong(size);
        pargs[3] = Py_True;
        pargs[4] = Py_True;
        pargs[5] = one_rtt;
        pargs[6] = frames;
        pargs[7] = PyLong_FromLongLong(built);
        pargs[8] = PyLong_FromLongLong(unit);
        if (pargs[2] == NULL || pargs[7] == NULL || pargs[8] == NULL) {
            ok = 0;
        } else {
            pkt = PyObject_Vectorcall(sent_packet_cls, pargs, 9, NULL);
        }
        Py_XDECREF(pargs[2]);
        Py_XDECREF(pargs[7]);
        Py_XDECREF(pargs[8]);
        if (!ok || pkt == NULL) {
            goto error;
        }
        Py_CLEAR(frames);
    }
    /* LossDetection.on_packet_sent(pkt) (its refusals: through the method itself) */
    if (qf_get_bool(R.lspace, s_discarded, &discarded) < 0) {
        goto error;
    }
    r = discarded ? QF_FALLBACK : qf_get_ll(R.lspace, s_largest_sent, &lsent);
    if (r < 0) {
        goto error;
    }
    if (r == QF_FALLBACK || pn <= lsent) {
        res = PyObject_CallMethodOneArg(R.loss, s_on_packet_sent, pkt);
        if (res == NULL) {
            goto error;
        }
        Py_CLEAR(res);
    } else {
        PyObject *sent;
        if (qf_set_ll(R.lspace, s_largest_sent, pn + built - 1) < 0 ||
            qf_get_obj(R.lspace, s_sent, &sent) < 0) {
            goto error;
        }
        r = PyObject_SetItem(sent, seal_args[3], pkt);
        Py_DECREF(sent);
        if (r < 0 || qf_add_attr(R.loss, s_packets_sent, built) < 0 ||
            qf_field_set(R.lspace, s_last_ack_eliciting_time, nowobj) < 0 ||
            qf_add_attr(R.lspace, s_ack_eliciting_in_flight, built) < 0 ||
            qf_add_attr(R.cc, s_bytes_in_flight, size) < 0 || /* cc.on_sent */
            qf_field_set(R.loss, s_timer_anchor, nowobj) < 0) {
            goto error;
        }
    }
    Py_CLEAR(pkt);
    if (qf_set_ll(R.space, s_next_pn, pn + built) < 0 ||
        qf_add_attr(R.flow, s_data_sent, offset - start) < 0 ||
        qf_set_ll(R.send, s_next_offset, offset) < 0) {
        goto error;
    }

    /* the stream leaves the queue when nothing of it waits (one just blocked by the
     * peer's limit stays: the general path sends its STREAM_DATA_BLOCKED) */
    if (qf_get_bool(R.send, s_fin_sent, &flag) < 0) {
        goto error;
    }
    has = has_data_to_send(R.send, offset, write_offset, max_data, fin_written, flag);
    if (has < 0) {
        goto error;
    }
    if (!has) {
        int blocked = offset < write_offset && offset >= max_data;
        if (blocked) {
            r = qf_get_ll(R.send, s_blocked_sent_at, &blocked_sent_at);
            if (r < 0) {
                goto error;
            }
            blocked = r == QF_FALLBACK || blocked_sent_at != max_data;
        }
        if (!blocked && PySequence_DelItem(R.queue, 0) < 0) {
            goto error;
        }
    }
    qf_pacer_consume(&P, now, size, srtt, cwnd);
    if (qf_pacer_store(R.pacer, &P) < 0 || qf_add_attr(R.counters, s_packets_sent, built) < 0 ||
        qf_add_attr(R.counters, s_datagrams_sent, built) < 0 ||
        qf_add_attr(R.counters, s_bytes_sent, size) < 0) {
        goto error;
    }
    if (qf_get_bool(conn, s_last_ack_eliciting_sent_after_receive, &flag) < 0) {
        goto error;
    }
    if (!flag) {
        PyObject *idle = PyObject_CallOneArg(effective_idle, conn), *deadline;
        if (idle == NULL) {
            goto error;
        }
        deadline = PyNumber_Add(nowobj, idle);
        Py_DECREF(idle);
        if (deadline == NULL) {
            goto error;
        }
        r = qf_field_set(conn, s_idle_deadline, deadline);
        Py_DECREF(deadline);
        if (r < 0 || qf_field_set(conn, s_last_ack_eliciting_sent_after_receive,
                                      Py_True) < 0) {
            goto error;
        }
    }
    /* bulk.py's _pace_after_run, when a budget for a whole run is not left */
    paced = 0;
    if (pacer_room - size < max_count * mds && built == count &&
        PyList_GET_SIZE(R.queue) > 0) {
        paced = PyObject_RichCompareBool(PyList_GET_ITEM(R.queue, 0), R.sid, Py_EQ);
        if (paced < 0) {
            goto error;
        }
    }
    if (paced) {
        long long mc = max_count - built ? max_count - built : max_count, mds2;
        if (qf_get_ll(R.cc, s_cwnd, &cwnd) || qf_get_ll(R.cc, s_bytes_in_flight, &bif) ||
            qf_get_ll(conn, s_max_datagram_size, &mds2) ||
            qf_get_ll(R.flow, s_data_sent, &data_sent)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_OverflowError, "build_bulk: state out of range");
            }
            goto error;
        }
        cwnd_room = cwnd - bif;
        if (cwnd_room >= mds2) {
            run_want(offset, write_offset, max_data, peer_max, data_sent, cwnd_room, mc,
                     mds2, &end, &want);
            if (want && qf_pacer_run_budget(&P, now, srtt, cwnd, want, &pacer_room, &later)) {
                if (qf_set_float(conn, s_pacer_deadline, later) < 0) {
                    goto error;
                }
            }
            if (want && qf_pacer_store(R.pacer, &P) < 0) {
                goto error;
            }
        }
    }
    refs_clear(&R);
    for (k = 0; k < 15; k++) {
        Py_XDECREF(seal_args[k]);
    }
    return PyLong_FromLongLong(built);

unread:
    refs_clear(&R);
    if (r < 0) {
        return NULL;
    }
    return PyObject_Vectorcall(twin, args, 6, NULL);

error:
    refs_clear(&R);
    for (k = 0; k < 15; k++) {
        Py_XDECREF(seal_args[k]);
    }
    Py_XDECREF(res);
    Py_XDECREF(pkt);
    Py_XDECREF(frames);
    Py_XDECREF(rec);
    return NULL;
}
