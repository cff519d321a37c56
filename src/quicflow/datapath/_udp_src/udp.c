/*
 * quicflow.datapath._udp -- receive a batch of UDP datagrams with one recvmmsg(2), and
 * send a connected socket's GSO runs in one call (send_runs, further down).
 *
 * The native half of datapath.backends.recv_into; the pure-Python recv_into_python (one
 * recvmsg per buffer) is the reference, and both append the same entries:
 *   (data: bytes, segment_size: int, (host: str, port: int), ecn_bits: int)
 * with segment_size from the UDP_GRO control message (the buffer's length when absent or
 * out of range), the ECN bits from IP_TOS / IPV6_TCLASS, the host as inet_ntop(3) writes
 * it (as CPython's socket module does) and truncated buffers (MSG_TRUNC) dropped and
 * counted.  Where the Python loop needs a last recvmsg that fails with EAGAIN to learn that
 * the queue is empty, a recvmmsg that returns fewer datagrams than asked already says so.
 *
 * recv(fd, out, max_buffers) -> (calls, datagrams, bytes, errors, truncated)
 *   Reads up to max_buffers buffers from the non-blocking socket fd, appends one entry
 *   per buffer to the list out, and returns the counters to add: receive syscalls made,
 *   datagrams (GRO segments counted one by one), bytes, failed calls other than EAGAIN
 *   (e.g. a queued ICMP error; each uses up one buffer of the budget, as in Python) and
 *   truncated buffers.
 *
 * The kernel writes each buffer straight into the bytes object that its entry will hold:
 * one object of SLOT_BYTES per slot waits in a small pool, and a filled one is shrunk in
 * place to the datagram's length (_PyBytes_Resize; glibc's realloc splits a shrinking
 * chunk without copying) and handed out, its slot filled again at the next call. Copying
 * from a static buffer instead cost a second pass over every received byte (issue 11:
 * 3-6 % of a bulk receiver's CPU samples in memcpy from this function, perf record).
 *
 * The GIL is held throughout: the pool is the module's and the call never blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define SLOTS 8              /* buffers per recvmmsg call */
#define SLOT_BYTES 65536     /* datapath.constants.RECV_SLOT_BYTES: up to 64 GRO segments */
#define SOL_UDP_LEVEL 17     /* datapath.constants.SOL_UDP */
#define UDP_GRO_TYPE 104     /* datapath.constants.UDP_GRO */
#define UDP_SEGMENT_TYPE 103 /* datapath.constants.UDP_SEGMENT */
#define ECN_MASK 3
/* as backends._ANC_SPACE: room for three 4-byte control messages */
#define CTRL_BYTES (3 * CMSG_SPACE(4))

/* the bytes objects the next recvmmsg fills (NULL: allocated at the next call), each of
 * SLOT_BYTES and referenced only here */
static PyObject *slot_obj[SLOTS];
static union {
    struct cmsghdr align;
    unsigned char bytes[CTRL_BYTES];
} slot_ctrl[SLOTS];
static struct sockaddr_storage slot_addr[SLOTS];

static PyObject *
make_address(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin6_port));
    }
    PyErr_SetString(PyExc_ValueError, "recv: not an IPv4 or IPv6 datagram socket");
    return NULL;
}

/* Append the entry of one received buffer; 0 on success, -1 with an exception set. */
static int
append_entry(PyObject *out, int i, const struct mmsghdr *msg, long *datagrams)
{
    const struct msghdr *hdr = &msg->msg_hdr;
    long size = (long)msg->msg_len;
    long segment = size;
    int ecn = 0;
    PyObject *data, *addr, *entry;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(hdr); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)hdr, c)) {
        const unsigned char *d = CMSG_DATA(c);
        size_t n = c->cmsg_len - CMSG_LEN(0);
        if (c->cmsg_level == SOL_UDP_LEVEL) {
            if (c->cmsg_type == UDP_GRO_TYPE) {
                /* int.from_bytes(cdata[:4], "little") */
                unsigned long v = 0;
                for (size_t k = 0; k < n && k < 4; k++) {
                    v |= (unsigned long)d[k] << (8 * k);
                }
                segment = (long)v;
                if (!(0 < segment && segment < size)) {
                    segment = size;
                }
            }
        } else if (n > 0 && c->cmsg_type == IP_TOS && c->cmsg_level == IPPROTO_IP) {
            ecn = d[0] & ECN_MASK;
        } else if (n > 0 && c->cmsg_type == IPV6_TCLASS && c->cmsg_level == IPPROTO_IPV6) {
            ecn = d[0] & ECN_MASK; /* little-endian int: low byte first */
        }
    }
    addr = make_address(&slot_addr[i], hdr->msg_namelen);
    if (addr == NULL) {
        return -1;
    }
    data = slot_obj[i]; /* taken from the pool, shrunk to the datagram in place */
    slot_obj[i] = NULL;
    if (size < SLOT_BYTES && _PyBytes_Resize(&data, (Py_ssize_t)size) < 0) {
        Py_DECREF(addr);
        return -1;
    }
    entry = PyTuple_New(4);
    if (entry == NULL) {
        Py_DECREF(data);
        Py_DECREF(addr);
        return -1;
    }
    PyTuple_SET_ITEM(entry, 0, data);
    PyTuple_SET_ITEM(entry, 1, PyLong_FromLong(segment));
    PyTuple_SET_ITEM(entry, 2, addr);
    PyTuple_SET_ITEM(entry, 3, PyLong_FromLong(ecn));
    if (PyTuple_GET_ITEM(entry, 1) == NULL || PyTuple_GET_ITEM(entry, 3) == NULL ||
        PyList_Append(out, entry) < 0) {
        Py_DECREF(entry);
        return -1;
    }
    Py_DECREF(entry);
    *datagrams += segment ? (size + segment - 1) / segment : 1;
    return 0;
}

static PyObject *
mod_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct mmsghdr msgs[SLOTS];
    struct iovec iov[SLOTS];
    long calls = 0, datagrams = 0, nbytes = 0, errors = 0, truncated = 0;
    long budget, used = 0, fd_long;
    int fd;
    PyObject *out;
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recv(fd, out, max_buffers)");
        return NULL;
    }
    fd_long = PyLong_AsLong(args[0]);
    if (fd_long == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd_long < 0 || fd_long > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "recv: bad file descriptor");
        return NULL;
    }
    fd = (int)fd_long;
    out = args[1];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "recv: out must be a list");
        return NULL;
    }
    budget = PyLong_AsLong(args[2]);
    if (budget == -1 && PyErr_Occurred()) {
        return NULL;
    }
    while (used < budget) {
        int want = budget - used > SLOTS ? SLOTS : (int)(budget - used);
        int n;
        for (int i = 0; i < want; i++) {
            if (slot_obj[i] == NULL &&
                (slot_obj[i] = PyBytes_FromStringAndSize(NULL, SLOT_BYTES)) == NULL) {
                return NULL;
            }
            iov[i].iov_base = PyBytes_AS_STRING(slot_obj[i]);
            iov[i].iov_len = SLOT_BYTES;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_name = &slot_addr[i];
            msgs[i].msg_hdr.msg_namelen = sizeof slot_addr[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = slot_ctrl[i].bytes;
            msgs[i].msg_hdr.msg_controllen = CTRL_BYTES;
            msgs[i].msg_len = 0;
        }
        calls++;
        n = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    return NULL;
                }
                continue; /* retried, as CPython's recvmsg does (PEP 475) */
            }
            errors++; /* counted and skipped, like a failed recvmsg */
            used++;
            continue;
        }
        for (int i = 0; i < n; i++) {
            used++;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                truncated++;
                continue;
            }
            if (append_entry(out, i, &msgs[i], &datagrams) < 0) {
                return NULL;
            }
            nbytes += (long)msgs[i].msg_len;
        }
        if (n < want) {
            break; /* the queue was empty: no EAGAIN call needed to learn it */
        }
    }
    return Py_BuildValue("(lllll)", calls, datagrams, nbytes, errors, truncated);
}


/* Whether errno value e is one of backends.WOULD_BLOCK_ERRNOS. */
static int
would_block(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS;
}

/*
 * send_runs(fd, buf, runs, first, segment_size, chunk_bytes)
 *   -> (index, offset, errno, batches, syscalls, datagrams, bytes, eagain, retries)
 *
 * The C twin of the GSO part of UdpTransport.send_runs on a connected socket: for
 * runs[first:], while a run (start, end, size) has size == segment_size and more than one
 * datagram (end - start > size), backends.send_gso(sock, view[:end], start, size, None,
 * chunk_bytes, counters): chunks of chunk_bytes, each one sendmsg with a UDP_SEGMENT
 * control message (a chunk of one datagram: send(2)), EINTR retried, a would-block errno
 * (EAGAIN, EWOULDBLOCK, ENOBUFS) counted and returned, any other errno retried once and
 * returned when it fails again.  Stops at the first run it does not take (errno 0,
 * offset = that run's start) or at a failed chunk (offset = the chunk's start, that run
 * counted in batches as Python counts it before sending).  Returns the counters to add.
 */
static PyObject *
mod_send_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    long fd_long, segment, chunk_bytes;
    Py_ssize_t first, n, i;
    long batches = 0, syscalls = 0, datagrams = 0, nbytes = 0, eagain = 0, retries = 0;
    long offset = 0;
    int code = 0;
    PyObject *runs;
    union {
        struct cmsghdr align;
        unsigned char bytes[CMSG_SPACE(sizeof(uint16_t))];
    } ctrl;
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "send_runs(fd, buf, runs, first, segment_size, chunk_bytes)");
        return NULL;
    }
    fd_long = PyLong_AsLong(args[0]);
    if (fd_long == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd_long < 0 || fd_long > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "send_runs: bad file descriptor");
        return NULL;
    }
    runs = args[2];
    if (!PyList_Check(runs)) {
        PyErr_SetString(PyExc_TypeError, "send_runs: runs must be a list");
        return NULL;
    }
    first = PyLong_AsSsize_t(args[3]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    segment = PyLong_AsLong(args[4]);
    if (segment == -1 && PyErr_Occurred()) {
        return NULL;
    }
    chunk_bytes = PyLong_AsLong(args[5]);
    if (chunk_bytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (segment <= 0 || segment > 0xffff || chunk_bytes < segment) {
        PyErr_SetString(PyExc_ValueError, "send_runs: bad segment or chunk size");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    memset(&ctrl, 0, sizeof ctrl);
    {
        struct cmsghdr *c = &ctrl.align;
        uint16_t seg16 = (uint16_t)segment; /* struct.pack("=H", size) */
        c->cmsg_level = SOL_UDP_LEVEL;
        c->cmsg_type = UDP_SEGMENT_TYPE;
        c->cmsg_len = CMSG_LEN(sizeof seg16);
        memcpy(CMSG_DATA(c), &seg16, sizeof seg16);
    }
    n = PyList_GET_SIZE(runs);
    for (i = first < 0 ? 0 : first; i < n; i++) {
        PyObject *run = PyList_GET_ITEM(runs, i);
        long start, end, size;
        int retried = 0;
        if (!PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 3) {
            PyErr_SetString(PyExc_TypeError, "send_runs: a run is (start, end, size)");
            goto fail;
        }
        start = PyLong_AsLong(PyTuple_GET_ITEM(run, 0));
        end = PyLong_AsLong(PyTuple_GET_ITEM(run, 1));
        size = PyLong_AsLong(PyTuple_GET_ITEM(run, 2));
        if (PyErr_Occurred()) {
            goto fail;
        }
        offset = start;
        if (size != segment || end - start <= size) {
            break; /* not this call's: the Python loop goes on from here */
        }
        if (start < 0 || end > (long)view.len) {
            PyErr_SetString(PyExc_ValueError, "send_runs: run outside the buffer");
            goto fail;
        }
        batches++;
        while (offset < end) {
            long stop = offset + chunk_bytes;
            ssize_t r;
            if (stop > end) {
                stop = end;
            }
            syscalls++;
            for (;;) {
                if (stop - offset > segment) {
                    struct iovec iov;
                    struct msghdr msg;
                    iov.iov_base = (char *)view.buf + offset;
                    iov.iov_len = (size_t)(stop - offset);
                    memset(&msg, 0, sizeof msg);
                    msg.msg_iov = &iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = ctrl.bytes;
                    msg.msg_controllen = sizeof ctrl.bytes;
                    r = sendmsg((int)fd_long, &msg, 0);
                } else {
                    r = send((int)fd_long, (char *)view.buf + offset,
                             (size_t)(stop - offset), 0);
                }
                if (r >= 0 || errno != EINTR) {
                    break;
                }
                if (PyErr_CheckSignals() < 0) { /* as CPython's sendmsg (PEP 475) */
                    goto fail;
                }
            }
            if (r < 0) {
                int e = errno ? errno : EIO;
                if (would_block(e)) {
                    eagain++;
                } else if (!retried) {
                    /* maybe an error left by an earlier datagram (IP_RECVERR): once more */
                    retried = 1;
                    retries++;
                    continue;
                }
                code = e;
                goto done;
            }
            retried = 0;
            datagrams += (stop - offset + segment - 1) / segment;
            nbytes += stop - offset;
            offset = stop;
        }
    }
    if (i > n) {
        i = n; /* (a start past the end: nothing to send, as in Python) */
    }
done:
    PyBuffer_Release(&view);
    return Py_BuildValue("(nlillllll)", i, offset, code, batches, syscalls, datagrams,
                         nbytes, eagain, retries);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/*
 * gso_batches(max_segments, max_bytes, bounds) -> [(start, end, size), ...]
 *
 * The C twin of aio.gso.gso_batches_python (the reference; tests/test_gso_native.py
 * compares them): datagrams back to back (bounds: the end offset of each) split into
 * GSO sends of equal-size datagrams, only the last of a send shorter, at most
 * max_segments datagrams and max_bytes bytes each (an empty datagram goes alone).
 */
static PyObject *
mod_gso_batches(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *bounds, *out;
    Py_ssize_t n, i = 0, j, k;
    long long start = 0, size, max_segments, max_bytes, b, prev, seg;
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "gso_batches(max_segments, max_bytes, bounds)");
        return NULL;
    }
    bounds = args[2];
    if (!PyList_Check(bounds)) {
        PyErr_SetString(PyExc_TypeError, "gso_batches: bounds must be a list");
        return NULL;
    }
    max_segments = PyLong_AsLongLong(args[0]);
    if (max_segments == -1 && PyErr_Occurred()) {
        return NULL;
    }
    max_bytes = PyLong_AsLongLong(args[1]);
    if (max_bytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_segments < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "gso_batches: limits must be positive");
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    n = PyList_GET_SIZE(bounds);
#define BOUND(idx, dst)                                                                \
    do {                                                                               \
        (dst) = PyLong_AsLongLong(PyList_GET_ITEM(bounds, (idx)));                     \
        if ((dst) == -1 && PyErr_Occurred()) {                                         \
            goto fail;                                                                 \
        }                                                                              \
    } while (0)
    while (i < n) {
        PyObject *run;
        BOUND(i, b);
        size = b - start;
        /* the reference's rule, datagram by datagram: the first datagram sets the size;
         * each next one joins while the send has room (segments, bytes) and it is not
         * larger; a shorter one joins and ends the send */
        j = i + 1;
        prev = b;
        for (k = i + 1; k < n && k - i < max_segments; k++) {
            BOUND(k, b);
            if (b - start > max_bytes) {
                break;
            }
            seg = b - prev;
            if (seg > size) {
                break;
            }
            j = k + 1;
            prev = b;
            if (seg < size) {
                break;
            }
        }
        BOUND(j - 1, b);
        run = Py_BuildValue("(LLL)", start, b, size);
        if (run == NULL || PyList_Append(out, run) < 0) {
            Py_XDECREF(run);
            goto fail;
        }
        Py_DECREF(run);
        start = b;
        i = j;
    }
#undef BOUND
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef udp_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))mod_recv, METH_FASTCALL,
     "recv(fd, out, max_buffers) -> (calls, datagrams, bytes, errors, truncated): read up "
     "to max_buffers buffers with recvmmsg and append (data, segment_size, (host, port), "
     "ecn) entries to out"},
    {"gso_batches", (PyCFunction)(void (*)(void))mod_gso_batches, METH_FASTCALL,
     "gso_batches(max_segments, max_bytes, bounds) -> [(start, end, size)]: datagrams "
     "back to back split into GSO sends (aio.gso.gso_batches_python's rule)"},
    {"send_runs", (PyCFunction)(void (*)(void))mod_send_runs, METH_FASTCALL,
     "send_runs(fd, buf, runs, first, segment_size, chunk_bytes) -> (index, offset, errno, "
     "batches, syscalls, datagrams, bytes, eagain, retries): GSO sends of runs[first:] of "
     "one segment size on a connected socket (backends.send_gso's loop)"},
    {NULL},
};

static struct PyModuleDef udp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quicflow.datapath._udp",
    .m_doc = "Batch UDP receive (recvmmsg) for quicflow.datapath",
    .m_size = -1,
    .m_methods = udp_methods,
};

PyMODINIT_FUNC PyInit__udp(void);

PyMODINIT_FUNC
PyInit__udp(void)
{
    PyObject *m = PyModule_Create(&udp_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SLOT_BYTES", SLOT_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
