/*
 * Example praas functions written in C against ffi/include/praas.h.
 *
 * Build (the dataplane tests do this):
 *     cc -shared -fPIC -O2 -I ffi/include ffi/examples/c_functions.c -o libc_functions.so
 *
 * Exports: c_echo, c_reverse, c_counter, c_call_echo, c_fail, c_process_id, c_msg_put, c_msg_get, and
 * with ABI version 2 or later c_remote_call and c_fan_out (built against the version-1 header, kept
 * in ffi/tests/v1/, the library has the others only and still runs on this runtime).
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

#if PRAAS_ABI_VERSION >= 2
/* Input "process function input": invokes `function` of `process` (another process of the
 * application) with the rest of the input and returns its output; its error is this function's. */
PRAAS_FUNCTION(c_remote_call) {
    const uint8_t *rest = input;
    size_t rest_len = input_len;
    const char *process = (const char *)rest;
    size_t process_len = next_word(&rest, &rest_len);
    const char *function = (const char *)rest;
    size_t function_len = next_word(&rest, &rest_len);
    if (process_len == 0 || function_len == 0) {
        return fail_with(ctx, PRAAS_ERR_INVALID_ARGUMENT, "c_remote_call: input is \"process function input\"");
    }
    praas_bytes answer = {NULL, 0, NULL};
    int32_t status = praas_remote_invoke(ctx, process, process_len, function, function_len, rest, rest_len, &answer);
    if (status != PRAAS_OK) {
        return fail_lent(ctx, status, &answer);
    }
    status = praas_output_write(ctx, output, answer.data, answer.len);
    praas_release(ctx, &answer);
    return status;
}

/* Input "p1,p2,... function input": submits `function` to every process listed at once, then
 * waits for each as it completes. One line per process in the order they answered:
 * "p ok OUTPUT" or "p err STATUS". At most 64 processes. */
PRAAS_FUNCTION(c_fan_out) {
    const uint8_t *rest = input;
    size_t rest_len = input_len;
    const uint8_t *list = rest;
    size_t list_len = next_word(&rest, &rest_len);
    const char *function = (const char *)rest;
    size_t function_len = next_word(&rest, &rest_len);
    uint64_t handles[64];
    const uint8_t *names[64];
    size_t name_lens[64];
    size_t count = 0;
    size_t start = 0;
    for (size_t i = 0; i <= list_len; i++) {
        if (i < list_len && list[i] != ',') {
            continue;
        }
        if (i > start) {
            if (count == 64) {
                return fail_with(ctx, PRAAS_ERR_INVALID_ARGUMENT, "c_fan_out: at most 64 processes");
            }
            praas_bytes error = {NULL, 0, NULL};
            int32_t status = praas_remote_submit(ctx, (const char *)list + start, i - start, function, function_len,
                                                 rest, rest_len, &handles[count], &error);
            if (status != PRAAS_OK) {
                return fail_lent(ctx, status, &error);
            }
            praas_release(ctx, &error);
            names[count] = list + start;
            name_lens[count] = i - start;
            count++;
        }
        start = i + 1;
    }
    int32_t status = PRAAS_OK;
    while (count > 0 && status == PRAAS_OK) {
        size_t index = 0;
        praas_bytes answer = {NULL, 0, NULL};
        int32_t got = praas_remote_wait(ctx, handles, count, &index, &answer);
        char head[32];
        int head_len = got == PRAAS_OK ? snprintf(head, sizeof head, " ok ") : snprintf(head, sizeof head, " err %d", (int)got);
        status = praas_output_write(ctx, output, names[index], name_lens[index]);
        if (status == PRAAS_OK) {
            status = praas_output_write(ctx, output, head, (size_t)head_len);
        }
        if (status == PRAAS_OK && got == PRAAS_OK) {
            status = praas_output_write(ctx, output, answer.data, answer.len);
        }
        if (status == PRAAS_OK) {
            status = praas_output_write(ctx, output, "\n", 1);
        }
        praas_release(ctx, &answer);
        /* The spent handle leaves the set: the last one takes its place. */
        count--;
        handles[index] = handles[count];
        names[index] = names[count];
        name_lens[index] = name_lens[count];
    }
    return status;
}
#endif
