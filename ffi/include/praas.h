/*
 * praas.h - the stable C ABI between the praas runtime and the functions it runs.
 *
 * A function lives in a shared library and is exported under a C symbol with the signature
 * praas_function (define it with PRAAS_FUNCTION). The runtime calls it with the input bytes, a
 * praas_context and a praas_output buffer that the runtime owns: the function writes its result
 * there, so returning a result never copies it. Everything a function may ask of the runtime
 * (state, messages, local invocations, the process id, logging, growing the output) goes through the
 * function table praas_api that the context points to: a function library links against nothing
 * of praas.
 *
 * This header mirrors ffi/src/lib.rs (crate praas-ffi) exactly; ffi/tests/header.rs compiles it
 * and checks every size, offset and constant against the Rust definitions.
 */
#ifndef PRAAS_H
#define PRAAS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Version of this ABI; bumped on any change of the types below. Version 2 appended the remote
 * invocation entries to praas_api (remote_invoke, remote_submit, remote_wait): a library built
 * against version 1 reads only the entries before them and runs unchanged; the helpers below check
 * ctx->api->abi_version before calling them.
 */
#define PRAAS_ABI_VERSION 2
/** The first ABI version with remote invocations. */
#define PRAAS_ABI_REMOTE 2

/*
 * Status codes shared by the C ABI and the wire protocol (docs/protocol.md).
 *
 * A function returns PRAAS_OK or any non-zero code; the runtime reports codes it does not know as
 * PRAAS_ERR_FUNCTION.
 */

/** Success. */
#define PRAAS_OK 0
/** The function reported a failure (its message says why). */
#define PRAAS_ERR_FUNCTION 1
/** No function of that name in this process. */
#define PRAAS_ERR_UNKNOWN_FUNCTION 2
/** The function panicked (Rust) or aborted its work; the process keeps serving. */
#define PRAAS_ERR_PANICKED 3
/** The invocation did not finish before its deadline. */
#define PRAAS_ERR_TIMEOUT 4
/** A frame or payload exceeded the configured maximum. */
#define PRAAS_ERR_TOO_LARGE 5
/** Bytes that do not follow the protocol. */
#define PRAAS_ERR_MALFORMED 6
/** The process is out of a resource (workers, buffers); retrying later may succeed. */
#define PRAAS_ERR_OVERLOADED 7
/** A state key (or another named thing) does not exist. */
#define PRAAS_ERR_NOT_FOUND 8
/** The request is valid but not supported by this process. */
#define PRAAS_ERR_UNSUPPORTED 9
/** An argument was invalid (for example a key that is not UTF-8). */
#define PRAAS_ERR_INVALID_ARGUMENT 10
/** A bug in the runtime; the message says more. */
#define PRAAS_ERR_INTERNAL 11
/** The destination process cannot receive now: swapped out, not running, or unreachable. */
#define PRAAS_ERR_UNAVAILABLE 12
/** A connection did not prove that it belongs to the same application. */
#define PRAAS_ERR_UNAUTHENTICATED 13

/** Log level for praas_api.log: error. */
#define PRAAS_LOG_ERROR 1
/** Log level: warning. */
#define PRAAS_LOG_WARN 2
/** Log level: info. */
#define PRAAS_LOG_INFO 3
/** Log level: debug. */
#define PRAAS_LOG_DEBUG 4

/** The context of one invocation (defined below). */
typedef struct praas_context praas_context;

/**
 * Bytes lent by the runtime to a function (a state value, the result of a local invocation, the
 * list of state keys). The function must hand them back with praas_release exactly once.
 */
typedef struct praas_bytes {
    /** First byte; valid for `len` bytes until released. May be dangling when `len` is 0. */
    const uint8_t *data;
    /** Number of bytes. */
    size_t len;
    /** Runtime-private owner of the bytes; NULL when there is nothing to release. */
    void *owner;
} praas_bytes;

/**
 * The output buffer of one invocation. The runtime owns the memory; the function writes up to
 * `capacity` bytes at `data`, sets `len`, and calls praas_output_reserve to get more room.
 */
typedef struct praas_output {
    /** Start of the writable buffer. */
    uint8_t *data;
    /** Bytes of output written so far. */
    size_t len;
    /** Writable bytes at `data`. */
    size_t capacity;
    /** Runtime-private handle of the buffer. */
    void *handle;
} praas_output;

/**
 * The runtime's services, reached through praas_context.api.
 *
 * Every entry returns a status code (PRAAS_OK on success) unless documented otherwise. Key and
 * name arguments are UTF-8 bytes with an explicit length (no terminating NUL needed).
 */
typedef struct praas_api {
    /** PRAAS_ABI_VERSION of the runtime. */
    uint32_t abi_version;
    /**
     * Grows `out` so that at least `additional` more bytes fit after `out->len`; keeps the bytes
     * written so far (they may move: reload `out->data`).
     */
    int32_t (*output_reserve)(praas_context *ctx, praas_output *out, size_t additional);
    /** Stores `value` under `key` in the process state, replacing any value, with the current time. */
    int32_t (*state_put)(praas_context *ctx, const uint8_t *key, size_t key_len, const uint8_t *value,
                         size_t value_len);
    /**
     * Reads the value of `key` without removing it (lent: release it); `timestamp_ns` (may be
     * NULL) receives the time of its last write in nanoseconds since the Unix epoch.
     * PRAAS_ERR_NOT_FOUND if absent.
     */
    int32_t (*state_get)(praas_context *ctx, const uint8_t *key, size_t key_len, praas_bytes *value,
                         uint64_t *timestamp_ns);
    /** Removes `key`; PRAAS_ERR_NOT_FOUND if it was absent. */
    int32_t (*state_delete)(praas_context *ctx, const uint8_t *key, size_t key_len);
    /**
     * Lists the state keys (lent: release it): `keys` receives back-to-back records of a uint16_t
     * key length (little-endian), the key bytes, and a uint64_t timestamp in nanoseconds since the
     * Unix epoch (little-endian).
     */
    int32_t (*state_keys)(praas_context *ctx, praas_bytes *keys);
    /**
     * Invokes another function of the same process on the calling thread and lends its output
     * (release it). On an error status, `output` holds the error message (also lent).
     */
    int32_t (*invoke)(praas_context *ctx, const uint8_t *function, size_t function_len, const uint8_t *input,
                      size_t input_len, praas_bytes *output);
    /** Lends the id of this process (UTF-8, nothing to release). */
    int32_t (*process_id)(praas_context *ctx, praas_bytes *id);
    /** Writes a log line at `level` (PRAAS_LOG_*) attributed to the running function. */
    void (*log)(praas_context *ctx, int32_t level, const uint8_t *message, size_t message_len);
    /** Sets the error message reported with a non-zero return status. */
    void (*set_error)(praas_context *ctx, const uint8_t *message, size_t message_len);
    /** Hands back bytes lent by the runtime. Releasing praas_bytes with a NULL owner does nothing. */
    void (*release)(praas_context *ctx, praas_bytes *bytes);
    /**
     * Puts the message `data` under `key` to process `dest` (this process's own id: its own
     * mailbox) and returns once the destination has stored it. Messages with the same key from the
     * same source queue in order; none is dropped. PRAAS_ERR_NOT_FOUND: no such process;
     * PRAAS_ERR_UNAVAILABLE: swapped out, not running or unreachable; PRAAS_ERR_TIMEOUT: no
     * confirmation before the invocation's deadline; PRAAS_ERR_OVERLOADED: its mailbox is full or
     * it is swapping out. On an error status, `error` (may be NULL) receives the reason (lent).
     */
    int32_t (*put)(praas_context *ctx, const uint8_t *dest, size_t dest_len, const uint8_t *key, size_t key_len,
                   const uint8_t *data, size_t data_len, praas_bytes *error);
    /**
     * Takes the oldest message under `key` from process `source` (NULL or length 0: from any
     * process), waiting up to `timeout_ms` (0: only look) and never past the invocation's deadline.
     * `message` receives its bytes and `from` (may be NULL) the source's id, both lent.
     * PRAAS_ERR_TIMEOUT if none came; on an error status `message` holds the reason (lent).
     */
    int32_t (*get)(praas_context *ctx, const uint8_t *source, size_t source_len, const uint8_t *key, size_t key_len,
                   uint64_t timeout_ms, praas_bytes *message, praas_bytes *from);
    /**
     * (Version 2.) Invokes `function` of process `process` of the same application with `input`,
     * over the peer connections that carry messages, within the invocation's deadline (which
     * travels with the call), and lends its output. On an error status `output` holds the reason
     * (lent): PRAAS_ERR_NOT_FOUND no such process, PRAAS_ERR_UNKNOWN_FUNCTION no such function, the
     * callee's own status if it failed or panicked, PRAAS_ERR_TIMEOUT deadline passed (a swapped-out
     * callee is first swapped in through the control plane, within it), PRAAS_ERR_UNAVAILABLE
     * swapped out and not swapped in (swap_in_on_call = false, no control channel), not running or
     * unreachable, PRAAS_ERR_UNSUPPORTED from an inline function.
     */
    int32_t (*remote_invoke)(praas_context *ctx, const uint8_t *process, size_t process_len, const uint8_t *function,
                             size_t function_len, const uint8_t *input, size_t input_len, praas_bytes *output);
    /**
     * (Version 2.) Starts the remote invocation remote_invoke makes and returns once its request is
     * sent: `handle` receives the handle to wait for it with (remote_wait). Calls not waited for are
     * dropped when the function returns. On an error status `error` (may be NULL) receives the
     * reason (lent).
     */
    int32_t (*remote_submit)(praas_context *ctx, const uint8_t *process, size_t process_len, const uint8_t *function,
                             size_t function_len, const uint8_t *input, size_t input_len, uint64_t *handle,
                             praas_bytes *error);
    /**
     * (Version 2.) Waits for the first of the `count` calls `handles` names to finish; `index` (may
     * be NULL) receives its position in `handles`, `output` its output or the reason of an error
     * status (lent), and the status is returned. That handle is spent; the others stay in flight.
     * An unknown handle: PRAAS_ERR_INVALID_ARGUMENT at its position.
     */
    int32_t (*remote_wait)(praas_context *ctx, const uint64_t *handles, size_t count, size_t *index,
                           praas_bytes *output);
} praas_api;

/** The context of one invocation, valid only during the call that received it. */
struct praas_context {
    /** The runtime's function table. */
    const praas_api *api;
    /** Runtime-private state of the invocation. */
    void *runtime;
};

/** Signature of every exported function: returns PRAAS_OK or an error status. */
typedef int32_t (*praas_function)(praas_context *ctx, const uint8_t *input, size_t input_len,
                                  praas_output *output);

/* ---------------------------------------------------------------------------------------------
 * Helpers. Nothing below is part of the ABI: they only forward to ctx->api.
 * ------------------------------------------------------------------------------------------- */

/** Marks a symbol as exported from the shared library (default visibility). */
#if defined(_WIN32) || defined(__CYGWIN__)
#define PRAAS_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define PRAAS_EXPORT __attribute__((visibility("default")))
#else
#define PRAAS_EXPORT
#endif

/** Marks a parameter that a function may leave unused. */
#if defined(__GNUC__) || defined(__clang__)
#define PRAAS_MAYBE_UNUSED __attribute__((unused))
#else
#define PRAAS_MAYBE_UNUSED
#endif

/** Gives a declaration C linkage also when compiled as C++. */
#ifdef __cplusplus
#define PRAAS_EXTERN_C extern "C"
#else
#define PRAAS_EXTERN_C
#endif

/* Internal: views a `const char *` (PRAAS_STR_) or `const void *` (PRAAS_DATA_) as `const uint8_t *`
 * without old-style casts in C++. */
#ifdef __cplusplus
#define PRAAS_STR_(p) reinterpret_cast<const uint8_t *>(p)
#define PRAAS_DATA_(p) static_cast<const uint8_t *>(p)
#else
#define PRAAS_STR_(p) ((const uint8_t *)(p))
#define PRAAS_DATA_(p) ((const uint8_t *)(p))
#endif

/**
 * Starts the definition of an exported function `name` with the praas_function signature; the
 * parameters are `ctx`, `input`, `input_len` and `output`, and any of them may go unused:
 *
 *     PRAAS_FUNCTION(echo) { return praas_output_write(ctx, output, input, input_len); }
 *
 * It declares the prototype first, so -Wmissing-prototypes stays quiet.
 */
#define PRAAS_FUNCTION(name)                                                                                \
    PRAAS_EXTERN_C PRAAS_EXPORT int32_t name(praas_context *ctx, const uint8_t *input, size_t input_len,    \
                                             praas_output *output);                                         \
    PRAAS_EXTERN_C PRAAS_EXPORT int32_t name(PRAAS_MAYBE_UNUSED praas_context *ctx,                         \
                                             PRAAS_MAYBE_UNUSED const uint8_t *input,                       \
                                             PRAAS_MAYBE_UNUSED size_t input_len,                           \
                                             PRAAS_MAYBE_UNUSED praas_output *output)

/**
 * Makes room for at least `additional` more bytes after `out->len` (asks the runtime only when the
 * buffer is too small). The bytes may move: reload `out->data` afterwards.
 */
static inline int32_t praas_output_reserve(praas_context *ctx, praas_output *out, size_t additional) {
    if (out->len <= out->capacity && out->capacity - out->len >= additional) {
        return PRAAS_OK;
    }
    return ctx->api->output_reserve(ctx, out, additional);
}

/** Appends `len` bytes at `data` to the output (reserve, copy, advance `out->len`). */
static inline int32_t praas_output_write(praas_context *ctx, praas_output *out, const void *data, size_t len) {
    int32_t status = praas_output_reserve(ctx, out, len);
    if (status != PRAAS_OK) {
        return status;
    }
    if (len > 0) {
        memcpy(out->data + out->len, data, len);
        out->len += len;
    }
    return PRAAS_OK;
}

/** Stores `value` under `key` in the process state, replacing any value. */
static inline int32_t praas_state_put(praas_context *ctx, const char *key, size_t key_len, const void *value,
                                      size_t value_len) {
    return ctx->api->state_put(ctx, PRAAS_STR_(key), key_len, PRAAS_DATA_(value), value_len);
}

/**
 * Reads the value of `key` into `value` (lent: hand it back with praas_release); `timestamp_ns`
 * (may be NULL) receives the time of its last write. PRAAS_ERR_NOT_FOUND if absent.
 */
static inline int32_t praas_state_get(praas_context *ctx, const char *key, size_t key_len, praas_bytes *value,
                                      uint64_t *timestamp_ns) {
    return ctx->api->state_get(ctx, PRAAS_STR_(key), key_len, value, timestamp_ns);
}

/** Removes `key`; PRAAS_ERR_NOT_FOUND if it was absent. */
static inline int32_t praas_state_delete(praas_context *ctx, const char *key, size_t key_len) {
    return ctx->api->state_delete(ctx, PRAAS_STR_(key), key_len);
}

/**
 * Lists the state keys into `keys` (lent: hand it back with praas_release) as records of uint16_t
 * key length (LE), key bytes, uint64_t timestamp in ns (LE).
 */
static inline int32_t praas_state_keys(praas_context *ctx, praas_bytes *keys) {
    return ctx->api->state_keys(ctx, keys);
}

/**
 * Invokes `function` of this process with `input` on the calling thread; `output` receives its
 * output, or its error message on an error status (lent either way: hand it back with praas_release).
 */
static inline int32_t praas_invoke(praas_context *ctx, const char *function, size_t function_len, const void *input,
                                   size_t input_len, praas_bytes *output) {
    return ctx->api->invoke(ctx, PRAAS_STR_(function), function_len, PRAAS_DATA_(input), input_len, output);
}

/** Lends the id of this process (UTF-8, not NUL-terminated; nothing to release). */
static inline int32_t praas_process_id(praas_context *ctx, praas_bytes *id) {
    return ctx->api->process_id(ctx, id);
}

/** Writes a log line at `level` (PRAAS_LOG_*) attributed to the running function. */
static inline void praas_log(praas_context *ctx, int32_t level, const char *message, size_t message_len) {
    ctx->api->log(ctx, level, PRAAS_STR_(message), message_len);
}

/** Sets the error message reported with a non-zero return status. */
static inline void praas_set_error(praas_context *ctx, const char *message, size_t message_len) {
    ctx->api->set_error(ctx, PRAAS_STR_(message), message_len);
}

/**
 * Puts `data` under `key` to process `dest` and returns once the destination has stored it;
 * `error` (may be NULL) receives the reason of an error status (lent: hand it back with praas_release).
 */
static inline int32_t praas_put(praas_context *ctx, const char *dest, size_t dest_len, const char *key, size_t key_len,
                                const void *data, size_t data_len, praas_bytes *error) {
    return ctx->api->put(ctx, PRAAS_STR_(dest), dest_len, PRAAS_STR_(key), key_len, PRAAS_DATA_(data), data_len,
                         error);
}

/**
 * Takes the oldest message under `key` from process `source` (NULL: from any process), waiting up
 * to `timeout_ms`. `message` receives its bytes, or the reason of an error status; `from` (may be
 * NULL) the source's id. Both are lent: hand them back with praas_release.
 */
static inline int32_t praas_get(praas_context *ctx, const char *source, size_t source_len, const char *key,
                                size_t key_len, uint64_t timeout_ms, praas_bytes *message, praas_bytes *from) {
    return ctx->api->get(ctx, PRAAS_STR_(source), source_len, PRAAS_STR_(key), key_len, timeout_ms, message, from);
}

/** Hands back bytes lent by the runtime, exactly once; a NULL owner makes it a no-op. */
static inline void praas_release(praas_context *ctx, praas_bytes *bytes) {
    ctx->api->release(ctx, bytes);
}

/**
 * Invokes `function` of process `process` of this application with `input`; `output` receives its
 * output, or the reason of an error status (lent either way: hand it back with praas_release).
 * PRAAS_ERR_UNSUPPORTED on a runtime older than ABI version 2.
 */
static inline int32_t praas_remote_invoke(praas_context *ctx, const char *process, size_t process_len,
                                          const char *function, size_t function_len, const void *input,
                                          size_t input_len, praas_bytes *output) {
    if (ctx->api->abi_version < PRAAS_ABI_REMOTE) {
        return PRAAS_ERR_UNSUPPORTED;
    }
    return ctx->api->remote_invoke(ctx, PRAAS_STR_(process), process_len, PRAAS_STR_(function), function_len,
                                   PRAAS_DATA_(input), input_len, output);
}

/**
 * Starts the remote invocation praas_remote_invoke makes; `handle` receives its handle for
 * praas_remote_wait, `error` (may be NULL) the reason of an error status (lent).
 */
static inline int32_t praas_remote_submit(praas_context *ctx, const char *process, size_t process_len,
                                          const char *function, size_t function_len, const void *input,
                                          size_t input_len, uint64_t *handle, praas_bytes *error) {
    if (ctx->api->abi_version < PRAAS_ABI_REMOTE) {
        return PRAAS_ERR_UNSUPPORTED;
    }
    return ctx->api->remote_submit(ctx, PRAAS_STR_(process), process_len, PRAAS_STR_(function), function_len,
                                   PRAAS_DATA_(input), input_len, handle, error);
}

/**
 * Waits for the first of `count` submitted calls to finish: `index` receives its position in
 * `handles`, `output` its output or error reason (lent). Wait for all by waiting for each.
 */
static inline int32_t praas_remote_wait(praas_context *ctx, const uint64_t *handles, size_t count, size_t *index,
                                        praas_bytes *output) {
    if (ctx->api->abi_version < PRAAS_ABI_REMOTE) {
        return PRAAS_ERR_UNSUPPORTED;
    }
    return ctx->api->remote_wait(ctx, handles, count, index, output);
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PRAAS_H */
