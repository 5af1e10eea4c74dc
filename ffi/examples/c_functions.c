/*
 * Example praas functions written in C against ffi/include/praas.h.
 *
 * Build (the dataplane tests do this):
 *     cc -shared -fPIC -O2 -I ffi/include ffi/examples/c_functions.c -o libc_functions.so
 *
 * Exports: c_echo, c_reverse, c_counter, c_call_echo, c_fail, c_process_id, c_msg_put, c_msg_get.
 */
#include <praas.h>

#include <stdio.h>
#include <string.h>

/* Sets `message` (a string literal or other NUL-terminated string) as the error; returns `status`. */
static int32_t fail_with(praas_context *ctx, int32_t status, const char *message) {
    praas_set_error(ctx, message, strlen(message));
    return status;
}

/* Copies the input to the output. */
PRAAS_FUNCTION(c_echo) {
    return praas_output_write(ctx, output, input, input_len);
}

/* Writes the input reversed, in place into the output buffer. */
PRAAS_FUNCTION(c_reverse) {
    int32_t status = praas_output_reserve(ctx, output, input_len);
    if (status != PRAAS_OK) {
        return status;
    }
    /* Reload `data` only after the reserve: it may have moved the buffer. */
    uint8_t *dst = output->data + output->len;
    for (size_t i = 0; i < input_len; i++) {
        dst[i] = input[input_len - 1 - i];
    }
    output->len += input_len;
    return PRAAS_OK;
}

/* Reads state key "c_counter" (little-endian uint64_t, absent = 0), adds 1, stores it back and
 * writes the new value as decimal text. */
PRAAS_FUNCTION(c_counter) {
    static const char key[] = "c_counter";
    const size_t key_len = sizeof key - 1;

    uint64_t count = 0;
    praas_bytes value = {NULL, 0, NULL};
    int32_t status = praas_state_get(ctx, key, key_len, &value, NULL);
    if (status == PRAAS_OK) {
        size_t len = value.len;
        if (len == 8) {
            for (size_t i = 0; i < 8; i++) {
                count |= (uint64_t)value.data[i] << (8 * i);
            }
        }
        praas_release(ctx, &value);
        if (len != 8) {
            return fail_with(ctx, PRAAS_ERR_FUNCTION, "state key c_counter does not hold a 64-bit counter");
        }
    } else if (status != PRAAS_ERR_NOT_FOUND) {
        return fail_with(ctx, status, "c_counter: state_get failed");
    }

    count += 1;
    uint8_t encoded[8];
    for (size_t i = 0; i < 8; i++) {
        encoded[i] = (uint8_t)(count >> (8 * i));
    }
    status = praas_state_put(ctx, key, key_len, encoded, sizeof encoded);
    if (status != PRAAS_OK) {
        return fail_with(ctx, status, "c_counter: state_put failed");
    }

    char text[24]; /* 20 digits of UINT64_MAX and a NUL */
    int n = snprintf(text, sizeof text, "%llu", (unsigned long long)count);
    if (n < 0 || (size_t)n >= sizeof text) {
        return fail_with(ctx, PRAAS_ERR_INTERNAL, "c_counter: formatting failed");
    }
    return praas_output_write(ctx, output, text, (size_t)n);
}

/* Invokes "echo" of the same process with the own input and returns its output; forwards its
 * error message and status on failure. */
PRAAS_FUNCTION(c_call_echo) {
    static const char function[] = "echo";
    praas_bytes result = {NULL, 0, NULL};
    int32_t status = praas_invoke(ctx, function, sizeof function - 1, input, input_len, &result);
    if (status != PRAAS_OK) {
        /* `data` may be dangling when `len` is 0: never hand such a pointer back to the runtime. */
        praas_set_error(ctx, result.len > 0 ? (const char *)result.data : "", result.len);
        praas_release(ctx, &result);
        return status;
    }
    status = praas_output_write(ctx, output, result.data, result.len);
    praas_release(ctx, &result);
    return status;
}

/* Always fails with PRAAS_ERR_FUNCTION. */
PRAAS_FUNCTION(c_fail) {
    return fail_with(ctx, PRAAS_ERR_FUNCTION, "c_fail was asked to fail");
}

/* Writes the id of this process. */
PRAAS_FUNCTION(c_process_id) {
    praas_bytes id = {NULL, 0, NULL};
    int32_t status = praas_process_id(ctx, &id);
    if (status != PRAAS_OK) {
        return fail_with(ctx, status, "c_process_id: process_id failed");
    }
    status = praas_output_write(ctx, output, id.data, id.len);
    /* The id owns nothing (owner is NULL), so this is a no-op, but releasing is always correct. */
    praas_release(ctx, &id);
    return status;
}

/* Splits the next space-separated word off `*text` (of `*len` bytes): returns its length and
 * advances `*text` and `*len` past it and one space. */
static size_t next_word(const uint8_t **text, size_t *len) {
    size_t n = 0;
    while (n < *len && (*text)[n] != ' ') {
        n++;
    }
    size_t skip = n < *len ? n + 1 : n;
    *text += skip;
    *len -= skip;
    return n;
}

/* Forwards the reason lent in `reason` as the error and returns `status`. */
static int32_t fail_lent(praas_context *ctx, int32_t status, praas_bytes *reason) {
    praas_set_error(ctx, reason->len > 0 ? (const char *)reason->data : "", reason->len);
    praas_release(ctx, reason);
    return status;
}

/* Input "dest key payload...": puts the payload under key to process dest; writes "stored". */
PRAAS_FUNCTION(c_msg_put) {
    const uint8_t *rest = input;
    size_t rest_len = input_len;
    const char *dest = (const char *)rest;
    size_t dest_len = next_word(&rest, &rest_len);
    const char *key = (const char *)rest;
    size_t key_len = next_word(&rest, &rest_len);
    if (dest_len == 0 || key_len == 0) {
        return fail_with(ctx, PRAAS_ERR_INVALID_ARGUMENT, "c_msg_put: input is \"dest key payload\"");
    }
    praas_bytes error = {NULL, 0, NULL};
    int32_t status = praas_put(ctx, dest, dest_len, key, key_len, rest, rest_len, &error);
    if (status != PRAAS_OK) {
        return fail_lent(ctx, status, &error);
    }
    praas_release(ctx, &error);
    return praas_output_write(ctx, output, "stored", 6);
}

/* Input "source|* key timeout_ms": takes a message; writes "from payload". */
PRAAS_FUNCTION(c_msg_get) {
    const uint8_t *rest = input;
    size_t rest_len = input_len;
    const char *source = (const char *)rest;
    size_t source_len = next_word(&rest, &rest_len);
    const char *key = (const char *)rest;
    size_t key_len = next_word(&rest, &rest_len);
    uint64_t timeout_ms = 0;
    for (size_t i = 0; i < rest_len; i++) {
        if (rest[i] < '0' || rest[i] > '9') {
            return fail_with(ctx, PRAAS_ERR_INVALID_ARGUMENT, "c_msg_get: timeout_ms is not a number");
        }
        timeout_ms = timeout_ms * 10 + (uint64_t)(rest[i] - '0');
    }
    if (source_len == 1 && source[0] == '*') {
        source = NULL;
        source_len = 0;
    }
    praas_bytes message = {NULL, 0, NULL};
    praas_bytes from = {NULL, 0, NULL};
    int32_t status = praas_get(ctx, source, source_len, key, key_len, timeout_ms, &message, &from);
    if (status != PRAAS_OK) {
        praas_release(ctx, &from);
        return fail_lent(ctx, status, &message);
    }
    status = praas_output_write(ctx, output, from.data, from.len);
    if (status == PRAAS_OK) {
        status = praas_output_write(ctx, output, " ", 1);
    }
    if (status == PRAAS_OK) {
        status = praas_output_write(ctx, output, message.data, message.len);
    }
    praas_release(ctx, &from);
    praas_release(ctx, &message);
    return status;
}
