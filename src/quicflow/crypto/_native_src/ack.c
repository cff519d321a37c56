/*
 * quicflow.crypto._native -- ack: ack_received(loss, epoch, ranges, ack_delay, now,
 * handshake_confirmed), the C twin of transport/recovery.py's
 * LossDetection.on_ack_received (the reference, and the fallback) for an ACK frame's
 * common case in a bulk transfer or a handshake: one range, in any packet number space
 * (Initial, Handshake, application), that acknowledges whole records (packets or
 * batches) and leaves nothing at or below the largest acknowledged outstanding (no loss
 * walk). It removes the records, takes the RTT sample
 * (RttEstimator.update), counts the bytes out of flight and grows the window in slow
 * start (CongestionControl.on_removed_from_flight / on_acked), and returns (acked, [])
 * with the same state as the Python code.
 *
 * Everything else goes to the twin before anything changed (handshake_confirmed, and a
 * client's peer_completed_address_validation on a Handshake ACK, which the twin sets
 * first too, aside): an epoch not given to ack_setup (0-RTT), several ranges, a range that splits a
 * batch, a loss walk due, congestion avoidance, an ACK of nothing new, an ACK of
 * a packet never sent (the twin raises), fields of unexpected types. ack_setup(twin,
 * ONE_RTT, INITIAL, HANDSHAKE) must have been called (recovery_glue.py does, at import;
 * ack_setup(twin, ONE_RTT) takes the application space only).
 * tests/test_ack_native.py compares both over whole downloads with loss.
 */
#include "native.h"

#include <math.h>

/* the epochs taken, by packet number space: Initial, Handshake, application (NULL: the
 * twin's) */
static PyObject *twin, *space_epoch[3];

#define NAMES(X)                                                                          \
    X(handshake_confirmed) X(spaces) X(discarded) X(largest_sent) X(largest_acked) X(sent) \
    X(count) X(size) X(time_sent) X(in_flight) X(ack_eliciting) X(rtt) X(cc)              \
    X(latest_rtt) X(smoothed_rtt) X(rttvar) X(min_rtt) X(has_sample) X(max_ack_delay)     \
    X(first_rtt_sample_time) X(loss_time) X(ack_eliciting_in_flight) X(bytes_in_flight)   \
    X(recovery_start_time) X(app_limited) X(cwnd) X(ssthresh) X(packets_acked) X(ss_ceiling) \
    X(is_server)                                                                          \
    X(peer_completed_address_validation) X(pto_count) X(timer_anchor) X(path_started)

#define DECLARE(n) static PyObject *s_##n;
NAMES(DECLARE)
#undef DECLARE

PyObject *
mod_ack_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "ack_setup(python_twin, ONE_RTT[, INITIAL, HANDSHAKE])");
        return NULL;
    }
#define INTERN(n)                                                                         \
    if (s_##n == NULL && (s_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return NULL;                                                                      \
    }
    NAMES(INTERN)
#undef INTERN
    Py_XSETREF(twin, Py_NewRef(args[0]));
    Py_XSETREF(space_epoch[2], Py_NewRef(args[1]));
    Py_XSETREF(space_epoch[0], nargs == 4 ? Py_NewRef(args[2]) : NULL);
    Py_XSETREF(space_epoch[1], nargs == 4 ? Py_NewRef(args[3]) : NULL);
    Py_RETURN_NONE;
}

typedef struct {
    double latest, smoothed, var, min;
    int has;
} Rtt;

/* RttEstimator.update */
static void
rtt_update(Rtt *r, double latest_rtt, double ack_delay, int confirmed, double max_ack_delay)
{
    double adjusted, d;
    r->latest = latest_rtt;
    if (!r->has) {
        r->has = 1;
        r->min = latest_rtt;
        if (!confirmed && max_ack_delay < ack_delay && ack_delay <= latest_rtt + QF_GRANULARITY) {
            d = latest_rtt - ack_delay;
            latest_rtt = QF_GRANULARITY > d ? QF_GRANULARITY : d; /* max(d, QF_GRANULARITY) */
        }
        r->smoothed = latest_rtt;
        r->var = latest_rtt / 2;
        return;
    }
    if (latest_rtt < r->min) {
        r->min = latest_rtt;
    }
    if (confirmed && ack_delay > max_ack_delay) {
        ack_delay = max_ack_delay;
    }
    adjusted = latest_rtt;
    if (latest_rtt >= r->min + ack_delay) {
        adjusted = latest_rtt - ack_delay;
    }
    d = r->smoothed - adjusted;
    r->var = 0.75 * r->var + 0.25 * fabs(d);
    r->smoothed = 0.875 * r->smoothed + 0.125 * adjusted;
}

PyObject *
mod_ack_received(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *loss, *epoch, *ranges, *nowobj, *spaces = NULL, *sp = NULL, *sent = NULL;
    PyObject *range, *key, *p, *acked = NULL, *keys = NULL, *rtt = NULL, *cc = NULL;
    PyObject *out = NULL, *lost = NULL, *largest_pkt = NULL;
    Py_ssize_t pos = 0, i, n;
    long long lo, hi, largest_sent, largest_acked, k, cnt, size, count = 0, ae = 0, growth = 0,
        recovering = 0, bif, cwnd, ssthresh, ss_ceiling, first_remaining = -1, sp_ae, packets_acked;
    double path_started = 0.0;
    double now, ack_delay, t, growth_time = 0.0, recovery_start = 0.0, largest_time = 0.0,
                                  max_ack_delay;
    int r, b, in_flight, ack_eliciting, any_eliciting = 0, no_recovery, app_limited,
        confirmed, is_server, pcav, first_none, has_remaining = 0, index;
    Rtt R;

    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "ack_received(loss, epoch, ranges, ack_delay, now, handshake_confirmed)");
        return NULL;
    }
    if (twin == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ack_setup was not called");
        return NULL;
    }
    loss = args[0];
    epoch = args[1];
    ranges = args[2];
    nowobj = args[4];

    r = QF_FALLBACK;
    for (index = 0; index < 3 && (space_epoch[index] == NULL || epoch != space_epoch[index]);
         index++) {
    }
    if (index == 3 || !PyFloat_CheckExact(nowobj) || !PyFloat_CheckExact(args[3]) ||
        !PyList_CheckExact(ranges) || PyList_GET_SIZE(ranges) != 1) {
        goto unread;
    }
    now = PyFloat_AS_DOUBLE(nowobj);
    ack_delay = PyFloat_AS_DOUBLE(args[3]);
    range = PyList_GET_ITEM(ranges, 0);
    if (!PyTuple_CheckExact(range) || PyTuple_GET_SIZE(range) != 2) {
        goto unread;
    }
    QF_READ(r, qf_as_ll(PyTuple_GET_ITEM(range, 0), &lo));
    QF_READ(r, qf_as_ll(PyTuple_GET_ITEM(range, 1), &hi));
    if (lo < 0 || hi < lo) {
        r = QF_FALLBACK;
        goto unread;
    }
    b = PyObject_IsTrue(args[5]);
    if (b < 0) {
        return NULL;
    }
    if (b && qf_field_set(loss, s_handshake_confirmed, Py_True) < 0) {
        return NULL; /* (the twin sets it first too) */
    }
    if (index == 1) { /* a client's Handshake ACK: the twin sets this first too */
        QF_READ(r, qf_get_exact_bool(loss, s_is_server, &is_server));
        if (!is_server &&
            qf_field_set(loss, s_peer_completed_address_validation, Py_True) < 0) {
            return NULL;
        }
    }
    spaces = qf_field_get(loss, s_spaces);
    if (spaces == NULL) {
        return NULL;
    }
    r = QF_FALLBACK;
    if (!PyList_CheckExact(spaces) || PyList_GET_SIZE(spaces) != 3) {
        goto unread;
    }
    sp = Py_NewRef(PyList_GET_ITEM(spaces, index));
    QF_READ(r, qf_get_exact_bool(sp, s_discarded, &b));
    if (b) {
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_ll(sp, s_largest_sent, &largest_sent));
    QF_READ(r, qf_get_ll(sp, s_largest_acked, &largest_acked));
    if (hi > largest_sent) { /* the twin raises AckError */
        r = QF_FALLBACK;
        goto unread;
    }
    sent = qf_field_get(sp, s_sent);
    if (sent == NULL) {
        goto error;
    }
    r = QF_FALLBACK;
    if (!PyDict_CheckExact(sent) || PyDict_GET_SIZE(sent) == 0) {
        goto unread;
    }
    /* the records a one-range ACK takes whole, in order (a batch split: the twin) */
    acked = PyList_New(0);
    keys = PyList_New(0);
    if (acked == NULL || keys == NULL) {
        goto error;
    }
    while (PyDict_Next(sent, &pos, &key, &p)) {
        QF_READ(r, qf_as_ll(key, &k));
        if (k > hi) {
            has_remaining = 1;
            first_remaining = first_remaining < 0 ? k : first_remaining;
            break;
        }
        QF_READ(r, qf_get_ll(p, s_count, &cnt));
        if (k + cnt - 1 < lo) { /* before the range: stays */
            if (first_remaining < 0) {
                first_remaining = k;
            }
            has_remaining = 1;
            continue;
        }
        if (!(lo <= k && k + cnt - 1 <= hi)) {
            r = QF_FALLBACK;
            goto unread;
        }
        if (PyList_Append(acked, p) < 0 || PyList_Append(keys, key) < 0) {
            goto error;
        }
    }
    n = PyList_GET_SIZE(acked);
    if (n == 0) {
        r = QF_FALLBACK;
        goto unread;
    }
    if (hi > largest_acked) {
        largest_acked = hi;
    }
    if (has_remaining && first_remaining <= largest_acked) { /* the loss walk: the twin's */
        r = QF_FALLBACK;
        goto unread;
    }
    /* the RTT sample: the newest acknowledged record ends at the largest acknowledged */
    {
        PyObject *last = PyList_GET_ITEM(acked, n - 1);
        long long lk, lc;
        QF_READ(r, qf_get_ll(last, s_count, &lc));
        QF_READ(r, qf_as_ll(PyList_GET_ITEM(keys, n - 1), &lk));
        if (lk + lc - 1 == hi) {
            largest_pkt = last;
            QF_READ(r, qf_get_float(last, s_time_sent, &largest_time));
        }
    }
    /* the flight's accounting */
    cc = qf_field_get(loss, s_cc);
    rtt = cc == NULL ? NULL : qf_field_get(loss, s_rtt);
    if (rtt == NULL) {
        goto error;
    }
    QF_READ(r, qf_get_float_or_none(cc, s_recovery_start_time, &recovery_start, &no_recovery));
    for (i = 0; i < n; i++) {
        p = PyList_GET_ITEM(acked, i);
        QF_READ(r, qf_get_ll(p, s_count, &cnt));
        QF_READ(r, qf_get_ll(p, s_size, &size));
        QF_READ(r, qf_get_exact_bool(p, s_in_flight, &in_flight));
        QF_READ(r, qf_get_exact_bool(p, s_ack_eliciting, &ack_eliciting));
        QF_READ(r, qf_get_float(p, s_time_sent, &t));
        count += cnt;
        any_eliciting |= ack_eliciting;
        if (in_flight) {
            if (ack_eliciting) {
                ae += cnt;
            }
            if (!no_recovery && t <= recovery_start) {
                recovering += size;
            } else {
                growth += size;
                if (t > growth_time) {
                    growth_time = t;
                }
            }
        }
    }
    QF_READ(r, qf_get_ll(cc, s_bytes_in_flight, &bif));
    if (bif > ((long long)1 << 60)) { /* (4 * bytes in flight below stays in 64 bits) */
        r = QF_FALLBACK;
        goto unread;
    }
    QF_READ(r, qf_get_ll(cc, s_cwnd, &cwnd));
    QF_READ(r, qf_get_ll(cc, s_ssthresh, &ssthresh));
    QF_READ(r, qf_get_ll(cc, s_ss_ceiling, &ss_ceiling));
    QF_READ(r, qf_get_exact_bool(cc, s_app_limited, &app_limited));
    /* CongestionControl.on_removed_from_flight(recovering), then on_acked(growth, ...) */
    if (recovering) {
        bif = bif - recovering > 0 ? bif - recovering : 0;
    }
    if (growth) {
        long long prior = bif, sz = growth;
        bif = prior - sz > 0 ? prior - sz : 0;
        if (!(app_limited || (!no_recovery && growth_time <= recovery_start))) {
            int done = 0;
            if (cwnd < ssthresh) {
                long long step = ssthresh - cwnd;
                if (4 * prior < cwnd || cwnd >= ss_ceiling) {
                    done = 1;
                } else if (sz <= step) {
                    cwnd += sz;
                    done = 1;
                } else {
                    cwnd += step;
                    sz -= step;
                }
            }
            if (!done) { /* congestion avoidance (CUBIC, NewReno): the twin's */
                r = QF_FALLBACK;
                goto unread;
            }
        }
    }
    /* the RTT estimator and the rest of what the twin reads */
    QF_READ(r, qf_get_float(rtt, s_latest_rtt, &R.latest));
    QF_READ(r, qf_get_float(rtt, s_smoothed_rtt, &R.smoothed));
    QF_READ(r, qf_get_float(rtt, s_rttvar, &R.var));
    QF_READ(r, qf_get_float(rtt, s_min_rtt, &R.min));
    QF_READ(r, qf_get_exact_bool(rtt, s_has_sample, &R.has));
    QF_READ(r, qf_get_float(loss, s_max_ack_delay, &max_ack_delay));
    QF_READ(r, qf_get_float(loss, s_path_started, &path_started));
    QF_READ(r, qf_get_exact_bool(loss, s_handshake_confirmed, &confirmed));
    QF_READ(r, qf_get_exact_bool(loss, s_is_server, &is_server));
    QF_READ(r, qf_get_exact_bool(loss, s_peer_completed_address_validation, &pcav));
    QF_READ(r, qf_get_float_or_none(loss, s_first_rtt_sample_time, &t, &first_none));
    QF_READ(r, qf_get_ll(sp, s_ack_eliciting_in_flight, &sp_ae));
    QF_READ(r, qf_get_ll(loss, s_packets_acked, &packets_acked));

    /* -- from here on, the state changes as the twin changes it */
    if (qf_set_ll(sp, s_largest_acked, largest_acked) < 0) {
        goto error;
    }
    for (i = 0; i < n; i++) {
        if (PyDict_DelItem(sent, PyList_GET_ITEM(keys, i)) < 0) {
            goto error;
        }
    }
    /* (a packet sent before the path began gives it no RTT sample: RFC 9000 §9.4) */
    if (largest_pkt != NULL && any_eliciting && largest_time >= path_started) {
        if (first_none && qf_field_set(loss, s_first_rtt_sample_time, nowobj) < 0) {
            goto error;
        }
        rtt_update(&R, now - largest_time, ack_delay, confirmed, max_ack_delay);
        if (qf_set_float(rtt, s_latest_rtt, R.latest) < 0 ||
            qf_set_float(rtt, s_smoothed_rtt, R.smoothed) < 0 ||
            qf_set_float(rtt, s_rttvar, R.var) < 0 || qf_set_float(rtt, s_min_rtt, R.min) < 0 ||
            qf_field_set(rtt, s_has_sample, R.has ? Py_True : Py_False) < 0) {
            goto error;
        }
    }
    if (qf_field_set(sp, s_loss_time, Py_None) < 0 ||
        qf_set_ll(sp, s_ack_eliciting_in_flight, sp_ae - ae) < 0 ||
        qf_set_ll(cc, s_bytes_in_flight, bif) < 0 || qf_set_ll(cc, s_cwnd, cwnd) < 0 ||
        qf_set_ll(loss, s_packets_acked, packets_acked + count) < 0) {
        goto error;
    }
    if ((is_server || pcav || confirmed) && qf_set_ll(loss, s_pto_count, 0) < 0) {
        goto error;
    }
    if (qf_field_set(loss, s_timer_anchor, nowobj) < 0) {
        goto error;
    }
    lost = PyList_New(0);
    if (lost == NULL) {
        goto error;
    }
    out = PyTuple_Pack(2, acked, lost);
    Py_DECREF(lost);
    goto done;

unread:
    if (r >= 0) {
        out = PyObject_Vectorcall(twin, args, 6, NULL);
    }
    goto done;
error:
    out = NULL;
done:
    Py_XDECREF(spaces);
    Py_XDECREF(sp);
    Py_XDECREF(sent);
    Py_XDECREF(acked);
    Py_XDECREF(keys);
    Py_XDECREF(rtt);
    Py_XDECREF(cc);
    return out;
}

/* -- ack_frame(conn, space, payload, now, epoch): the C twin of transport/ack_send.py's
 * encode_ack_python (the reference, and the fallback): the space's ACK frame (the newest
 * 32 ranges, the ACK delay with our exponent in 1-RTT and 3 before, the ECN counts when
 * any is set) appended to payload, the bytes the reference writes. A value the
 * reference would refuse or compute otherwise (a negative or 2^62 or larger field, a
 * delay that is no finite float, an empty range set, fields of unexpected types) goes to
 * the reference before anything is written. ack_frame_setup(twin, ONE_RTT) must have
 * been called (send.py does, at import). tests/test_send_fast_paths.py compares both
 * with the frame encoder. */

static PyObject *frame_twin, *frame_one_rtt;

#define FRAME_NAMES(X)                                                                    \
    X(received) X(starts) X(ends) X(largest_received_time) X(configuration)               \
    X(ack_delay_exponent) X(ecn_counts)

#define DECLARE(n) static PyObject *f_##n;
FRAME_NAMES(DECLARE)
#undef DECLARE

PyObject *
mod_ack_frame_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ack_frame_setup(python_twin, ONE_RTT)");
        return NULL;
    }
#define INTERN(n)                                                                         \
    if (f_##n == NULL && (f_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return NULL;                                                                      \
    }
    FRAME_NAMES(INTERN)
#undef INTERN
    Py_XSETREF(frame_twin, Py_NewRef(args[0]));
    Py_XSETREF(frame_one_rtt, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

#define ACK_RANGES 32

PyObject *
mod_ack_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *conn, *space, *payload, *nowobj, *received = NULL, *starts = NULL,
                                               *ends = NULL, *cfg = NULL, *ecn = NULL;
    /* the fields in order: largest, delay, count, first, (gap, length) per range, ECN */
    long long v[4 + 2 * ACK_RANGES + 3], s, e, smallest, exponent = 3, counts[3];
    unsigned char out[1 + 8 * (4 + 2 * ACK_RANGES + 3)];
    size_t n = 0;
    Py_ssize_t i, stop, j, nv = 0, k, old;
    double now, lrt, d;
    int r, with_ecn;

    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "ack_frame(conn, space, payload, now, epoch)");
        return NULL;
    }
    if (frame_twin == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ack_frame_setup was not called");
        return NULL;
    }
    conn = args[0];
    space = args[1];
    payload = args[2];
    nowobj = args[3];
    r = QF_FALLBACK;
    if (!PyByteArray_CheckExact(payload) || !PyFloat_CheckExact(nowobj)) {
        goto unread;
    }
    now = PyFloat_AS_DOUBLE(nowobj);
    QF_READ(r, qf_get_obj(space, f_received, &received));
    QF_READ(r, qf_get_obj(received, f_starts, &starts));
    QF_READ(r, qf_get_obj(received, f_ends, &ends));
    r = QF_FALLBACK;
    if (!PyList_CheckExact(starts) || !PyList_CheckExact(ends) ||
        PyList_GET_SIZE(starts) == 0 || PyList_GET_SIZE(ends) < PyList_GET_SIZE(starts)) {
        goto unread;
    }
    i = PyList_GET_SIZE(starts) - 1;
    stop = i > ACK_RANGES - 1 ? i - ACK_RANGES : -1;
    QF_READ(r, qf_get_float(space, f_largest_received_time, &lrt));
    d = (now - lrt) * 1000000; /* int(): toward zero */
    if (!isfinite(d) || d >= 9.0e18 || d <= -9.0e18) {
        r = QF_FALLBACK;
        goto unread;
    }
    if (args[4] == frame_one_rtt) {
        QF_READ(r, qf_get_obj(conn, f_configuration, &cfg));
        QF_READ(r, qf_get_ll(cfg, f_ack_delay_exponent, &exponent));
        if (exponent < 0 || exponent > 62) {
            r = QF_FALLBACK;
            goto unread;
        }
    }
    QF_READ(r, qf_get_obj(space, f_ecn_counts, &ecn));
    r = QF_FALLBACK;
    if (!PyList_CheckExact(ecn) || PyList_GET_SIZE(ecn) != 3) {
        goto unread;
    }
    for (k = 0; k < 3; k++) {
        QF_READ(r, qf_as_ll(PyList_GET_ITEM(ecn, k), &counts[k]));
    }
    with_ecn = counts[0] || counts[1] || counts[2];
    /* the values, each checked before anything is written */
    QF_READ(r, qf_as_ll(PyList_GET_ITEM(starts, i), &smallest));
    QF_READ(r, qf_as_ll(PyList_GET_ITEM(ends, i), &e));
    v[nv++] = e - 1; /* largest */
    {
        long long delay_us = (long long)d;
        v[nv++] = delay_us > 0 ? delay_us >> exponent : 0;
    }
    v[nv++] = i - stop - 1; /* the ranges after the first */
    v[nv++] = e - 1 - smallest;
    for (j = i - 1; j > stop; j--) {
        QF_READ(r, qf_as_ll(PyList_GET_ITEM(ends, j), &e));
        QF_READ(r, qf_as_ll(PyList_GET_ITEM(starts, j), &s));
        v[nv++] = smallest - (e - 1) - 2; /* the gap */
        smallest = s;
        v[nv++] = e - 1 - smallest;
    }
    if (with_ecn) {
        for (k = 0; k < 3; k++) {
            v[nv++] = counts[k];
        }
    }
    for (k = 0; k < nv; k++) {
        if (v[k] < 0 || v[k] > QF_FIELD_MAX) { /* the reference raises */
            r = QF_FALLBACK;
            goto unread;
        }
    }
    out[n++] = with_ecn ? 0x03 : 0x02; /* ACK_ECN, ACK */
    for (k = 0; k < nv; k++) {
        n += (size_t)qf_put_varint(out + n, (uint64_t)v[k]);
    }
    old = PyByteArray_GET_SIZE(payload);
    if (PyByteArray_Resize(payload, old + (Py_ssize_t)n) < 0) {
        goto error;
    }
    memcpy(PyByteArray_AS_STRING(payload) + old, out, n);
    Py_INCREF(Py_None);
    r = 0;
    goto done;

unread:
    if (r >= 0) {
        PyObject *res = PyObject_Vectorcall(frame_twin, args, 5, NULL);
        Py_XDECREF(res);
        r = res == NULL ? -1 : 0;
        if (r == 0) {
            Py_INCREF(Py_None);
        }
    }
    goto done;
error:
    r = -1;
done:
    Py_XDECREF(received);
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_XDECREF(cfg);
    Py_XDECREF(ecn);
    return r < 0 ? NULL : Py_None;
}
