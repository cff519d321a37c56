/*
 * quicflow.crypto._native -- pacer: the C twin of transport/congestion.py's Pacer for the
 * bulk sender (bulk.c): its fields loaded into a QfPacer, run_budget, capacity, _refill
 * and consume with the same float arithmetic in the same order, and the fields stored
 * back. congestion.py stays the reference: a change there needs the same change here
 * (tests/test_bulk_native.py compares whole downloads through both).
 */
#include "native.h"

#define PACER_NAMES(X)                                                                    \
    X(multiplier) X(burst_interval) X(granularity) X(promised) X(tokens)                  \
    X(burst_datagrams) X(max_datagram_size) X(max_burst_datagrams) X(run_datagrams)       \
    X(last_time)

#define DECLARE(n) static PyObject *s_##n;
PACER_NAMES(DECLARE)
#undef DECLARE

int
qf_pacer_setup(void)
{
#define INTERN(n)                                                                         \
    if (s_##n == NULL && (s_##n = PyUnicode_InternFromString(#n)) == NULL) {              \
        return -1;                                                                        \
    }
    PACER_NAMES(INTERN)
#undef INTERN
    return 0;
}

int
qf_pacer_load(PyObject *pacer, QfPacer *p)
{
    PyObject *last;
    int r;
    if ((r = qf_get_float(pacer, s_multiplier, &p->multiplier)) ||
        (r = qf_get_float(pacer, s_burst_interval, &p->burst_interval)) ||
        (r = qf_get_float(pacer, s_granularity, &p->granularity)) ||
        (r = qf_get_float(pacer, s_promised, &p->promised)) ||
        (r = qf_get_float(pacer, s_tokens, &p->tokens)) ||
        (r = qf_get_ll(pacer, s_burst_datagrams, &p->burst)) ||
        (r = qf_get_ll(pacer, s_max_datagram_size, &p->mds)) ||
        (r = qf_get_ll(pacer, s_max_burst_datagrams, &p->max_burst)) ||
        (r = qf_get_ll(pacer, s_run_datagrams, &p->run))) {
        return r;
    }
    if (p->burst < 0 || p->mds < 0 || p->max_burst < 0 || p->run < 0 ||
        p->burst > (1 << 20) || p->mds > (1 << 20) || p->max_burst > (1 << 20) ||
        p->run > (1 << 20)) {
        return QF_FALLBACK;  /* (products of these stay exact doubles below) */
    }
    if (qf_get_obj(pacer, s_last_time, &last) < 0) {
        return -1;
    }
    r = 0;
    if (last == Py_None) {
        p->has_last = 0;
        p->last_time = 0.0;
    } else if (PyFloat_CheckExact(last)) {
        p->has_last = 1;
        p->last_time = PyFloat_AS_DOUBLE(last);
    } else {
        r = QF_FALLBACK;
    }
    Py_DECREF(last);
    return r;
}

int
qf_pacer_store(PyObject *pacer, const QfPacer *p)
{
    if (qf_set_float(pacer, s_tokens, p->tokens) < 0 ||
        qf_set_float(pacer, s_promised, p->promised) < 0) {
        return -1;
    }
    if (!p->has_last) {
        return qf_field_set(pacer, s_last_time, Py_None);
    }
    return qf_set_float(pacer, s_last_time, p->last_time);
}

double
qf_pacer_rate(const QfPacer *p, double srtt, long long cwnd)
{
    return srtt > 0.0 ? p->multiplier * (double)cwnd / srtt : 0.0;
}

/* Pacer.capacity */
double
qf_pacer_capacity(const QfPacer *p, double rate, long long cwnd)
{
    double capacity = (double)(p->burst * p->mds);
    if (p->burst_interval > 0.0 && rate > 0.0) {
        double a = rate * p->burst_interval, b = (double)(p->max_burst * p->mds);
        double timed = b < a ? b : a;
        double c = (double)(p->run * p->mds), d = (double)cwnd / 8.0;
        double floor_ = d < c ? d : c;
        if (floor_ > timed) {
            timed = floor_;
        }
        if (timed > capacity) {
            capacity = timed;
        }
    }
    return capacity;
}

/* Pacer._refill */
double
qf_pacer_refill(QfPacer *p, double now, double rate, double capacity)
{
    int had = p->has_last;
    double last = p->last_time;
    if (!had || rate == 0.0) {
        p->tokens = capacity;
    } else if (now > last) {
        double tokens = p->tokens + (now - last) * rate;
        p->tokens = tokens < capacity ? tokens : capacity;
    }
    if (!had || now > last) {
        p->last_time = now;
        p->has_last = 1;
    }
    return p->tokens;
}

/* Pacer.run_budget: 1 with *later set (nothing now), 0 with *room set */
int
qf_pacer_run_budget(QfPacer *p, double now, double srtt, long long cwnd, long long want,
                 long long *room, double *later)
{
    double rate = qf_pacer_rate(p, srtt, cwnd), capacity, early, tokens, need;
    if (rate == 0.0) {
        *room = want;
        return 0;
    }
    capacity = qf_pacer_capacity(p, rate, cwnd);
    early = rate * p->granularity;
    if (p->has_last && now <= p->last_time) {
        tokens = p->tokens + early;
    } else {
        tokens = qf_pacer_refill(p, now, rate, capacity) + early;
    }
    need = (double)want < capacity ? (double)want : capacity;
    if (p->promised != 0.0 && p->promised < need) {
        need = p->promised;
    }
    if (tokens > need - 1.0) {
        p->promised = 0.0;
        *room = (long long)tokens;
        return 0;
    }
    p->promised = need;
    *later = now + (need - tokens) / rate;
    return 1;
}

/* Pacer.consume */
void
qf_pacer_consume(QfPacer *p, double now, long long size, double srtt, long long cwnd)
{
    double rate = qf_pacer_rate(p, srtt, cwnd);
    if (p->has_last && rate != 0.0 && now <= p->last_time) {
        p->tokens -= (double)size;
        return;
    }
    qf_pacer_refill(p, now, rate, qf_pacer_capacity(p, rate, cwnd));
    p->tokens -= (double)size;
}
