/*
 * quicflow.crypto._native -- idle: effective_idle(conn), the C twin of
 * transport/idle.py's effective_idle_python (the reference, and the fallback): the
 * idle timeout in force, the smaller of ours and the peer's, the half-open limit for a
 * server's unvalidated connection, never below 3 PTO (with the peer's max_ack_delay as
 * ack_frequency.peer_max_ack_delay gives it, which the reference calls). The same float
 * arithmetic in the same order; a field of another type than the common case's (an int
 * idle_timeout, a transport parameter past 2^53) goes to the twin, which changes
 * nothing. idle_setup(twin) must have been called (receive.py does, at import).
 * tests/test_idle_native.py compares both over connection states.
 */
#include "native.h"

#include <math.h>

static PyObject *twin;

#define IDLE_NAMES(X)                                                                     \
    X(configuration) X(idle_timeout) X(peer_params) X(max_idle_timeout) X(is_client)      \
    X(address_validated) X(half_open_timeout) X(loss) X(rtt) X(rttvar) X(smoothed_rtt)    \
    X(ack_freq) X(peer_delay) X(max_ack_delay)

#define DECLARE(n) static PyObject *s_##n;
IDLE_NAMES(DECLARE)
#undef DECLARE

#define EXACT ((long long)1 << 53) /* an int that converts to a double exactly */

PyObject *
mod_idle_setup(PyObject *module, PyObject *arg)
{
    (void)module;
#define INTERN(n)                                                                         \
    if (s_##n == NULL && (s_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return NULL;                                                                      \
    }
    IDLE_NAMES(INTERN)
#undef INTERN
    Py_XSETREF(twin, Py_NewRef(arg));
    Py_RETURN_NONE;
}

PyObject *
mod_effective_idle(PyObject *module, PyObject *conn)
{
    PyObject *cfg = NULL, *params = NULL, *loss = NULL, *rtt = NULL, *af = NULL, *out = NULL;
    double idle, timeout, half_open, rttvar, smoothed, peer_delay, peer_mad, var, pto;
    long long ms;
    int r, is_client, validated;

    (void)module;
    if (twin == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "idle_setup was not called");
        return NULL;
    }
    QF_READ(r, qf_get_obj(conn, s_configuration, &cfg));
    QF_READ(r, qf_get_float(cfg, s_idle_timeout, &timeout));
    idle = timeout > 0 ? timeout : INFINITY;
    QF_READ(r, qf_get_obj(conn, s_peer_params, &params));
    if (params != Py_None) {
        QF_READ(r, qf_get_ll(params, s_max_idle_timeout, &ms));
        if (ms > 0) {
            if (ms > EXACT) {
                r = QF_FALLBACK;
                goto unread;
            }
            if ((double)ms / 1000 < idle) {
                idle = (double)ms / 1000;
            }
        }
    }
    QF_READ(r, qf_get_exact_bool(conn, s_is_client, &is_client));
    QF_READ(r, qf_get_exact_bool(conn, s_address_validated, &validated));
    if (!is_client && !validated) { /* half-open: short life */
        QF_READ(r, qf_get_float(cfg, s_half_open_timeout, &half_open));
        if (half_open < idle) {
            idle = half_open;
        }
    }
    if (idle == INFINITY) {
        out = PyFloat_FromDouble(idle);
        goto done;
    }
    QF_READ(r, qf_get_obj(conn, s_loss, &loss));
    QF_READ(r, qf_get_obj(loss, s_rtt, &rtt));
    QF_READ(r, qf_get_float(rtt, s_rttvar, &rttvar));
    QF_READ(r, qf_get_float(rtt, s_smoothed_rtt, &smoothed));
    /* ack_frequency.peer_max_ack_delay */
    QF_READ(r, qf_get_obj(conn, s_ack_freq, &af));
    QF_READ(r, qf_get_float(af, s_peer_delay, &peer_delay));
    if (peer_delay >= 0) {
        peer_mad = peer_delay;
    } else if (params != Py_None) {
        QF_READ(r, qf_get_ll(params, s_max_ack_delay, &ms));
        if (ms > EXACT || ms < -EXACT) {
            r = QF_FALLBACK;
            goto unread;
        }
        peer_mad = (double)ms / 1000;
    } else {
        peer_mad = 0.025;
    }
    var = 4 * rttvar;
    pto = 3 * (smoothed + (var > QF_GRANULARITY ? var : QF_GRANULARITY) + peer_mad);
    out = PyFloat_FromDouble(idle > pto ? idle : pto);
    goto done;

unread:
    if (r >= 0) {
        out = PyObject_CallOneArg(twin, conn);
    }
done:
    Py_XDECREF(cfg);
    Py_XDECREF(params);
    Py_XDECREF(loss);
    Py_XDECREF(rtt);
    Py_XDECREF(af);
    return out;
}
