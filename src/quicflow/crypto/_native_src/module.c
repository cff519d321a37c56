/*
 * quicflow.crypto._native -- module: method table, module definition and
 * PyInit__native (KeyContext / CidState type registration, OPENSSL_VERSION).
 * See native.h for an overview of the extension and its sources.
 */
#include "native.h"

#include <openssl/crypto.h>

/* For tests: the AES-GCM per-packet set-up by parameter (1) or by the init (0); returns
 * the former setting. Turning it on where the probe found it inexact is refused. */
static PyObject *
mod_gcm_nonce_param(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg), before = kc_gcm_params;
    (void)self;
    if (on < 0) {
        return NULL;
    }
    if (on && !kc_gcm_params_probe()) {
        PyErr_SetString(PyExc_RuntimeError, "this OpenSSL does not take the GCM nonce as a "
                                            "parameter exactly");
        return NULL;
    }
    kc_gcm_params = on;
    return PyBool_FromLong(before);
}

static PyMethodDef module_methods[] = {
    {"_gcm_nonce_param", mod_gcm_nonce_param, METH_O,
     "_gcm_nonce_param(on) -> bool (for tests): the AES-GCM nonce and tag of each packet "
     "set as OpenSSL 3 parameters (True) or by a cipher init (False); the former setting"},
    {"seal", (PyCFunction)(void (*)(void))mod_seal, METH_FASTCALL,
     "seal(table, buf, packets): seal (offset, header_len, payload_len, pn, cid) in place"},
    {"open", (PyCFunction)(void (*)(void))mod_open, METH_FASTCALL,
     "open(table, buf, packets, result_type) -> (results, failures)"},
    {"open_run", (PyCFunction)(void (*)(void))mod_open_run, METH_FASTCALL,
     "open_run(table, buf, packets) -> (entries, failures): open and coalesce STREAM data"},
    {"short_run", (PyCFunction)(void (*)(void))mod_short_run, METH_FASTCALL,
     "short_run(data, pos, segment_size, key) -> Segments | None: endpoint/segments.py's "
     "short_run_python (the run entries of a GRO buffer from pos when all are key's)"},
    {"seal_stream_run", (PyCFunction)(void (*)(void))mod_seal_stream_run, METH_FASTCALL,
     "seal_stream_run(table, buf, key, pn, pn_len, stream_id, data, start, end, offset, "
     "off_len, data_cap, count, fin[, dcid]) -> int: frame and seal a run of STREAM "
     "packets (sealed with key's entry; dcid, default key, goes into the headers)"},
    {"bulk_setup", (PyCFunction)(void (*)(void))mod_bulk_setup, METH_FASTCALL,
     "bulk_setup(python_twin, SentPacket, effective_idle, R_STREAM_RUN, ONE_RTT, "
     "engine_type): what build_bulk needs from the transport layer"},
    {"build_bulk", (PyCFunction)(void (*)(void))mod_build_bulk, METH_FASTCALL,
     "build_bulk(conn, now, buf, bounds, seal, max_count) -> int: transport/bulk.py's "
     "build_bulk_python in one call (the cases it does not take go to that twin)"},
    {"ack_setup", (PyCFunction)(void (*)(void))mod_ack_setup, METH_FASTCALL,
     "ack_setup(python_twin, ONE_RTT[, INITIAL, HANDSHAKE]): what ack_received needs from "
     "the transport layer (the epochs it takes)"},
    {"ack_received", (PyCFunction)(void (*)(void))mod_ack_received, METH_FASTCALL,
     "ack_received(loss, epoch, ranges, ack_delay, now, handshake_confirmed) -> (acked, "
     "lost): LossDetection.on_ack_received's common case (the rest goes to that twin)"},
    {"idle_setup", mod_idle_setup, METH_O,
     "idle_setup(python_twin): the function effective_idle hands what it does not take to"},
    {"effective_idle", mod_effective_idle, METH_O,
     "effective_idle(conn) -> float: the idle timeout in force, transport/idle.py's "
     "effective_idle_python in one call (the cases it does not take go to that twin)"},
    {"sent_setup", (PyCFunction)(void (*)(void))mod_sent_setup, METH_FASTCALL,
     "sent_setup(python_twin, new_sent_packet, ZERO_RTT, LossDetection.on_packet_sent, "
     "CongestionControl.on_sent, effective_idle): what packet_sent needs from the "
     "transport layer"},
    {"packet_sent", (PyCFunction)(void (*)(void))mod_packet_sent, METH_FASTCALL,
     "packet_sent(conn, epoch, pn, size, ack_eliciting, records, now): transport/send.py's "
     "on_packet_sent_python in one call (the cases it does not take go to that twin)"},
    {"ack_frame_setup", (PyCFunction)(void (*)(void))mod_ack_frame_setup, METH_FASTCALL,
     "ack_frame_setup(python_twin, ONE_RTT): what ack_frame needs from the transport layer"},
    {"ack_frame", (PyCFunction)(void (*)(void))mod_ack_frame, METH_FASTCALL,
     "ack_frame(conn, space, payload, now, epoch): transport/ack_send.py's "
     "encode_ack_python in one call (the cases it does not take go to that twin)"},
    {"field_slot", (PyCFunction)(void (*)(void))mod_field_slot, METH_FASTCALL,
     "field_slot(o, name, write) -> int | None: the slot offset the C twins use for "
     "o.name (None: they read or write it by name; for tests)"},
    {"field_get", (PyCFunction)(void (*)(void))mod_field_get, METH_FASTCALL,
     "field_get(o, name): o.name as the C twins read it (for tests)"},
    {"field_set", (PyCFunction)(void (*)(void))mod_field_set, METH_FASTCALL,
     "field_set(o, name, v): o.name = v as the C twins write it (for tests)"},
    {"push_short_packet", (PyCFunction)(void (*)(void))mod_push_short_packet, METH_FASTCALL,
     "push_short_packet(buf, dcid, pn, pn_len, payload) -> header_len | None: a 1-RTT "
     "packet's header, payload and tag room appended to buf"},
    {"parse_header", (PyCFunction)(void (*)(void))mod_parse_header, METH_FASTCALL,
     "parse_header(data, pos, short_dcid_len, header_type) -> header | None: a short or "
     "a v1/v2 Initial/0-RTT/Handshake header (None: let wire.packet parse or reject it)"},
    {"parse_frames", (PyCFunction)(void (*)(void))mod_parse_frames, METH_FASTCALL,
     "parse_frames(payload, classes) -> list | None: the frames of a handshake or plain "
     "1-RTT packet (None: let wire.frames parse or reject them)"},
    {"decode_tparams", (PyCFunction)(void (*)(void))mod_decode_tparams, METH_FASTCALL,
     "decode_tparams(data, from_server, specs, server_only) -> dict | None: the common "
     "case of a peer's transport parameters (None: let wire.tparams decode or reject)"},
    {"parse_client_hello", (PyCFunction)(void (*)(void))mod_parse_client_hello, METH_FASTCALL,
     "parse_client_hello(body) -> (random, session_id, suites, extensions, ext_map, offers) "
     "| None: the common case of a ClientHello (None: let tls.messages parse or reject it)"},
    {"reset_token", (PyCFunction)(void (*)(void))mod_reset_token, METH_FASTCALL,
     "reset_token(key, cid) -> bytes: HMAC-SHA256(key, 'quicflow stateless reset' | cid)"
     "[:16] (the key's HMAC state kept for the next call with it)"},
    {"ticket_message", (PyCFunction)(void (*)(void))mod_ticket_message, METH_FASTCALL,
     "ticket_message(key, nonce, aad, issued_ms, lifetime, age_add, max_early, suite, psk, "
     "alpn, server_name, transport_parameters) -> NewSessionTicket bytes | None"},
    {"address_token", (PyCFunction)(void (*)(void))mod_address_token, METH_FASTCALL,
     "address_token(key, kind, nonce, issued_ms, odcid, retry_scid, aad) -> bytes | None: "
     "an address validation token sealed as endpoint/tokens.TokenSealer.seal does"},
    {"hkdf_extract", mod_hkdf_extract, METH_VARARGS,
     "hkdf_extract(suite, salt, ikm) -> bytes (an empty salt is hash-length zeros)"},
    {"hkdf_expand_label", mod_hkdf_expand_label, METH_VARARGS,
     "hkdf_expand_label(suite, secret, label, length[, context]) -> bytes "
     "(length at most one hash)"},
    {"finished_verify_data", mod_finished_verify_data, METH_VARARGS,
     "finished_verify_data(suite, base_key, transcript_hash) -> bytes (RFC 8446 4.4.4)"},
    {"quic_keys", mod_quic_keys, METH_VARARGS,
     "quic_keys(suite, secret, v2, with_next) -> (key, iv, hp[, ku, next_key, next_iv])"},
    {"initial_keys", mod_initial_keys, METH_VARARGS,
     "initial_keys(salt, dcid, v2) -> (client secret, key, iv, hp, server secret, key, iv, "
     "hp)"},
    {"initial_contexts", mod_initial_contexts, METH_VARARGS,
     "initial_contexts(salt, dcid, v2) -> (client KeyContext, server KeyContext) of the "
     "Initial keys (initial_keys with each direction's keys in a KeyContext)"},
    {"packet_key_context", mod_packet_key_context, METH_VARARGS,
     "packet_key_context(suite, secret, v2[, hp_key]) -> KeyContext of the secret's packet "
     "keys (quic_keys and KeyContext in one call)"},
    {"object_plan", (PyCFunction)(void (*)(void))mod_object_plan, METH_FASTCALL,
     "object_plan(node, argnames[, positional]) -> a callable that makes the object graph "
     "node describes "
     "(plan.c; transport/inline.py's C twin)"},
    {"tls_server_flight", mod_tls_server_flight, METH_VARARGS,
     "tls_server_flight(suite, derived, shared, transcript, sh_len, sign, with_ticket) -> "
     "(handshake_secret, master_secret, c_hs, s_hs, CertificateVerify, server verify_data, "
     "c_ap, s_ap, client verify_data, ticket PSK or b''); sign: None or "
     "sign(transcript hash) -> CertificateVerify message"},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "quicflow.crypto._native",
    .m_doc = "Batch QUIC packet protection on OpenSSL libcrypto",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void);

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m;
    if (PyType_Ready(&KeyContextType) < 0 || PyType_Ready(&CidStateType) < 0 ||
        qf_plan_type_ready() < 0 || qf_segments_ready() < 0) {
        return NULL;
    }
#ifdef QF_OSSL_PARAMS
    kc_gcm_params = kc_gcm_params_probe();
#endif
    m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "KeyContext", (PyObject *)&KeyContextType) < 0 ||
        PyModule_AddObjectRef(m, "CidState", (PyObject *)&CidStateType) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) <
            0 ||
        PyModule_AddIntConstant(m, "GCM_NONCE_PARAM", kc_gcm_params) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
