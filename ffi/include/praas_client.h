/*
 * praas_client.h: invoke praas cloud processes from C and C++.
 *
 * Link with the praas client library (crate ffi/client: `cargo build --release -p praas-client-c`
 * builds target/release/libpraas_client.so; -lpraas_client). Status codes are those of praas.h:
 * PRAAS_OK, the process's own status for a failed invocation (PRAAS_ERR_UNKNOWN_FUNCTION, ...),
 * or, for the client's own failures, PRAAS_ERR_TIMEOUT (no answer in time),
 * PRAAS_ERR_UNAVAILABLE (the connection failed or closed), PRAAS_ERR_MALFORMED (the peer broke the
 * protocol), PRAAS_ERR_TOO_LARGE (nothing was sent), PRAAS_ERR_INVALID_ARGUMENT (a NULL or
 * non-UTF-8 argument), PRAAS_ERR_INTERNAL.
 *
 * A praas_client is used by one thread at a time; several threads use several clients. Every
 * call that can fail takes `err`, a buffer of `err_len` bytes for the reason (NUL-terminated,
 * cut to fit; NULL for none).
 */
#ifndef PRAAS_CLIENT_H
#define PRAAS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "praas.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A connection to one cloud process. */
typedef struct praas_client praas_client;

/**
 * Connects to the cloud process at `address`: "HOST:PORT" (TCP) or "rdma://HOST:PORT" (RDMA
 * verbs). `timeout_ms` bounds the connection and every later wait for an answer (0: 60 s).
 * Returns NULL on failure, with the reason in `err`.
 */
praas_client *praas_client_connect(const char *address, uint32_t timeout_ms, char *err, size_t err_len);

/**
 * Connects as praas_client_connect does and authenticates as client `name` of application `app`
 * with the application's client key `key` (`praas app client-key APP` prints it), for processes
 * that serve authenticated clients only. Returns NULL on failure, with the reason in `err` (a
 * wrong key: the process's refusal).
 */
praas_client *praas_client_connect_auth(const char *address, const char *app, const char *name, const char *key,
                                        uint32_t timeout_ms, char *err, size_t err_len);

/**
 * Invokes `function` with `input_len` bytes at `input` (NULL when 0) and waits for its output.
 * On PRAAS_OK, `*output` and `*output_len` hold the output (free it with
 * praas_client_free_output); otherwise they are NULL and 0 and the status code is returned.
 */
int32_t praas_client_invoke(praas_client *client, const char *function, const uint8_t *input, size_t input_len,
                            uint8_t **output, size_t *output_len, char *err, size_t err_len);

/**
 * How long, in microseconds, each later wait for an answer polls the connection (non-blocking
 * reads, yielding the CPU between them) before it blocks (0, the default: block at once). Polling
 * spares the wake-up of a blocked thread, at the price of a CPU while it polls: for processes
 * that answer within microseconds on another CPU or host. RDMA connections poll already (their
 * policy is PRAAS_RDMA_POLL's); for them this changes nothing. PRAAS_OK, or
 * PRAAS_ERR_INVALID_ARGUMENT for a NULL client.
 */
int32_t praas_client_set_spin(praas_client *client, uint32_t spin_us);

/** Frees an output of praas_client_invoke (NULL: nothing). */
void praas_client_free_output(uint8_t *output, size_t output_len);

/** Closes the connection and frees the client (NULL: nothing). */
void praas_client_close(praas_client *client);

#ifdef __cplusplus
}
#endif

#endif /* PRAAS_CLIENT_H */
