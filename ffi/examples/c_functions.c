/*
 * Example praas functions written in C against ffi/include/praas.h.
 *
 * Build (the dataplane tests do this):
 *     cc -shared -fPIC -O2 -I ffi/include ffi/examples/c_functions.c -o libc_functions.so
 *
 * Exports: c_echo, c_reverse, c_counter, c_call_echo, c_fail, c_process_id.
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
