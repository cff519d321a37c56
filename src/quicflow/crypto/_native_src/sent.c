/*
 * quicflow.crypto._native -- sent: packet_sent(conn, epoch, pn, size, ack_eliciting,
 * records, now), the C twin of transport/send.py's on_packet_sent_python (the
 * reference, and the fallback): what the per-packet send path records for each packet
 * it built. The connection's counters, the SentPacket (made by the callable the
 * reference uses, recovery.new_sent_packet), LossDetection.on_packet_sent (RFC 9002
 * A.5) with CongestionControl.on_sent, and for an ack-eliciting packet Pacer.consume
 * (pacer.c's twin) and the idle deadline of the first one sent after a receive (with
 * the effective-idle function receive.py picked). The same state changes in the same
 * order.
 *
 * Everything else goes to the reference before anything changed: a space discarded or a
 * packet number not above the largest sent (the reference raises), a
 * LossDetection.on_packet_sent or CongestionControl.on_sent other than the ones given to
 * sent_setup (a subclass, a test's wrapper), fields of unexpected types.
 * sent_setup(twin, new_sent_packet, ZERO_RTT, LossDetection.on_packet_sent,
 * CongestionControl.on_sent, effective_idle) must have been called (send.py does, at
 * import). tests/test_sent_native.py compares both over whole connections.
 */
#include "native.h"

static PyObject *twin, *new_sent_packet, *zero_rtt, *loss_on_sent, *cc_on_sent,
    *effective_idle;

#define SENT_NAMES(X)                                                                     \
    X(counters) X(packets_sent) X(zero_rtt_sent) X(loss) X(spaces) X(discarded)           \
    X(largest_sent) X(sent) X(ack_eliciting_in_flight) X(last_ack_eliciting_time) X(cc)   \
    X(bytes_in_flight) X(timer_anchor) X(pacer) X(rtt) X(smoothed_rtt) X(cwnd)            \
    X(last_ack_eliciting_sent_after_receive) X(idle_deadline) X(on_packet_sent) X(on_sent)     \
    X(tokens) X(last_time)

#define DECLARE(n) static PyObject *s_##n;
SENT_NAMES(DECLARE)
#undef DECLARE

PyObject *
mod_sent_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "sent_setup(python_twin, new_sent_packet, ZERO_RTT, "
                        "LossDetection.on_packet_sent, CongestionControl.on_sent, "
                        "effective_idle)");
        return NULL;
    }
#define INTERN(n)                                                                         \
    if (s_##n == NULL && (s_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return NULL;                                                                      \
    }
    SENT_NAMES(INTERN)
#undef INTERN
    if (qf_pacer_setup() < 0) {
        return NULL;
    }
    Py_XSETREF(twin, Py_NewRef(args[0]));
    Py_XSETREF(new_sent_packet, Py_NewRef(args[1]));
    Py_XSETREF(zero_rtt, Py_NewRef(args[2]));
    Py_XSETREF(loss_on_sent, Py_NewRef(args[3]));
    Py_XSETREF(cc_on_sent, Py_NewRef(args[4]));
    Py_XSETREF(effective_idle, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

/* epoch value (Epoch: INITIAL, ZERO_RTT, HANDSHAKE, ONE_RTT) -> its packet number space
 * (recovery.EPOCH_SPACE) */
static const int epoch_space[4] = {0, 2, 1, 2};

PyObject *
mod_packet_sent(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *conn, *epoch, *pnobj, *sizeobj, *nowobj;
    PyObject *counters = NULL, *loss = NULL, *spaces = NULL, *sp = NULL, *sent = NULL,
             *cc = NULL, *pacer = NULL, *rtt = NULL, *pkt = NULL, *idle = NULL,
             *deadline = NULL, *out = NULL;
    long long pn, size, packets_sent, zero_sent = 0, largest_sent, loss_sent, sp_ae = 0,
                                      bif = 0, cwnd = 0;
    long ev;
    double now, srtt = 0.0;
    int r, eliciting, zero, discarded, after_receive = 1;
    QfPacer P;

    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "packet_sent(conn, epoch, pn, size, ack_eliciting, records, now)");
        return NULL;
    }
    if (twin == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sent_setup was not called");
        return NULL;
    }
    conn = args[0];
    epoch = args[1];
    pnobj = args[2];
    sizeobj = args[3];
    nowobj = args[6];
    r = QF_FALLBACK;
    if (!PyLong_Check(epoch) || !PyFloat_CheckExact(nowobj) ||
        (args[4] != Py_True && args[4] != Py_False) || !PyList_CheckExact(args[5])) {
        goto unread;
    }
    ev = PyLong_AsLong(epoch);
    if (ev < 0 || ev > 3) {
        if (ev == -1 && PyErr_Occurred()) {
            return NULL;
        }
        goto unread;
    }
    eliciting = args[4] == Py_True;
    zero = epoch == zero_rtt;
    now = PyFloat_AS_DOUBLE(nowobj);
    QF_READ(r, qf_as_ll(pnobj, &pn));
    QF_READ(r, qf_as_ll(sizeobj, &size));

    /* everything read before anything changes */
    QF_READ(r, qf_get_obj(conn, s_counters, &counters));
    QF_READ(r, qf_get_ll(counters, s_packets_sent, &packets_sent));
    if (zero) {
        QF_READ(r, qf_get_ll(counters, s_zero_rtt_sent, &zero_sent));
    }
    QF_READ(r, qf_get_obj(conn, s_loss, &loss));
    r = QF_FALLBACK;
    if (_PyType_Lookup(Py_TYPE(loss), s_on_packet_sent) != loss_on_sent) {
        goto unread;
    }
    QF_READ(r, qf_get_obj(loss, s_spaces, &spaces));
    r = QF_FALLBACK;
    if (!PyList_CheckExact(spaces) || PyList_GET_SIZE(spaces) != 3) {
        goto unread;
    }
    sp = Py_NewRef(PyList_GET_ITEM(spaces, epoch_space[ev]));
    QF_READ(r, qf_get_exact_bool(sp, s_discarded, &discarded));
    QF_READ(r, qf_get_ll(sp, s_largest_sent, &largest_sent));
    r = QF_FALLBACK;
    if (discarded || pn <= largest_sent) { /* the reference raises */
        goto unread;
    }
    QF_READ(r, qf_get_obj(sp, s_sent, &sent));
    r = QF_FALLBACK;
    if (!PyDict_CheckExact(sent)) {
        goto unread;
    }
    QF_READ(r, qf_get_ll(loss, s_packets_sent, &loss_sent));
    if (eliciting) { /* (in flight = ack-eliciting on this path) */
        QF_READ(r, qf_get_ll(sp, s_ack_eliciting_in_flight, &sp_ae));
        QF_READ(r, qf_get_obj(loss, s_cc, &cc));
        r = QF_FALLBACK;
        if (_PyType_Lookup(Py_TYPE(cc), s_on_sent) != cc_on_sent) {
            goto unread;
        }
        QF_READ(r, qf_get_ll(cc, s_bytes_in_flight, &bif));
        QF_READ(r, qf_get_ll(cc, s_cwnd, &cwnd));
        QF_READ(r, qf_get_obj(conn, s_pacer, &pacer));
        QF_READ(r, qf_pacer_load(pacer, &P));
        QF_READ(r, qf_get_obj(loss, s_rtt, &rtt));
        QF_READ(r, qf_get_float(rtt, s_smoothed_rtt, &srtt));
        QF_READ(r, qf_get_exact_bool(conn, s_last_ack_eliciting_sent_after_receive,
                                     &after_receive));
        if (cwnd > ((long long)1 << 53)) { /* (a double exactly, as in the reference) */
            r = QF_FALLBACK;
            goto unread;
        }
    }

    /* -- from here on, the state changes as the reference changes it */
    if (qf_set_ll(counters, s_packets_sent, packets_sent + 1) < 0 ||
        (zero && qf_set_ll(counters, s_zero_rtt_sent, zero_sent + 1) < 0)) {
        goto error;
    }
    {
        PyObject *pargs[7] = {pnobj, nowobj, sizeobj, args[4], args[4], epoch, args[5]};
        pkt = PyObject_Vectorcall(new_sent_packet, pargs, 7, NULL);
    }
    if (pkt == NULL) {
        goto error;
    }
    /* LossDetection.on_packet_sent (a new record: count 1) */
    if (qf_set_ll(sp, s_largest_sent, pn) < 0 || PyDict_SetItem(sent, pnobj, pkt) < 0 ||
        qf_set_ll(loss, s_packets_sent, loss_sent + 1) < 0) {
        goto error;
    }
    if (eliciting) {
        if (qf_field_set(sp, s_last_ack_eliciting_time, nowobj) < 0 ||
            qf_set_ll(sp, s_ack_eliciting_in_flight, sp_ae + 1) < 0 ||
            qf_set_ll(cc, s_bytes_in_flight, bif + size) < 0 || /* cc.on_sent */
            qf_field_set(loss, s_timer_anchor, nowobj) < 0) {
            goto error;
        }
        /* Pacer.consume: its tokens, and its last_time the very `now` object when it
         * moved (as the reference stores it; qf_pacer_store would make new floats of
         * last_time and the unchanged promised, 48 bytes a connection keeps) */
        {
            int moved = !P.has_last || now > P.last_time;
            qf_pacer_consume(&P, now, size, srtt, cwnd);
            moved = moved && P.has_last && P.last_time == now;
            if (qf_set_float(pacer, s_tokens, P.tokens) < 0 ||
                (moved && qf_field_set(pacer, s_last_time, nowobj) < 0)) {
                goto error;
            }
        }
        if (!after_receive) {
            idle = PyObject_CallOneArg(effective_idle, conn);
            deadline = idle == NULL ? NULL : PyNumber_Add(nowobj, idle);
            if (deadline == NULL || qf_field_set(conn, s_idle_deadline, deadline) < 0 ||
                qf_field_set(conn, s_last_ack_eliciting_sent_after_receive, Py_True) < 0) {
                goto error;
            }
        }
    }
    out = Py_NewRef(Py_None);
    goto done;

unread:
    if (r >= 0) {
        out = PyObject_Vectorcall(twin, args, 7, NULL);
    }
    goto done;
error:
    out = NULL;
done:
    Py_XDECREF(counters);
    Py_XDECREF(loss);
    Py_XDECREF(spaces);
    Py_XDECREF(sp);
    Py_XDECREF(sent);
    Py_XDECREF(cc);
    Py_XDECREF(pacer);
    Py_XDECREF(rtt);
    Py_XDECREF(pkt);
    Py_XDECREF(idle);
    Py_XDECREF(deadline);
    return out;
}
