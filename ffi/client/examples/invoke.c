/*
 * invoke: a C client of a praas cloud process.
 *
 *   invoke ADDRESS FUNCTION [INPUT | @FILE]
 *
 * Writes the function's output to standard output. Exit status: 0, or the praas status code of
 * the failure (the reason on standard error). ADDRESS is HOST:PORT or rdma://HOST:PORT. With
 * PRAAS_SPIN_US set, the wait for the answer polls that many microseconds before it blocks; with
 * PRAAS_CLIENT_CREDENTIALS=APP:KEY set, the client authenticates with application APP's client key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "praas_client.h"

/* Reads a whole file into memory; returns NULL on failure. */
static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            uint8_t *bigger = realloc(buf, cap);
            if (bigger == NULL) {
                free(buf);
            }
            buf = bigger;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s ADDRESS FUNCTION [INPUT | @FILE]\n", argv[0]);
        return PRAAS_ERR_INVALID_ARGUMENT;
    }
    const uint8_t *input = NULL;
    uint8_t *owned = NULL;
    size_t input_len = 0;
    if (argc == 4 && argv[3][0] == '@') {
        owned = read_file(argv[3] + 1, &input_len);
        if (owned == NULL) {
            fprintf(stderr, "cannot read %s\n", argv[3] + 1);
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        input = owned;
    } else if (argc == 4) {
        input = (const uint8_t *)argv[3];
        input_len = strlen(argv[3]);
    }

    char err[512];
    praas_client *client = NULL;
    const char *credentials = getenv("PRAAS_CLIENT_CREDENTIALS");
    const char *colon = credentials == NULL ? NULL : strchr(credentials, ':');
    if (colon != NULL) {
        char app[256];
        size_t app_len = (size_t)(colon - credentials);
        if (app_len >= sizeof app) {
            fprintf(stderr, "PRAAS_CLIENT_CREDENTIALS: application name too long\n");
            free(owned);
            return PRAAS_ERR_INVALID_ARGUMENT;
        }
        memcpy(app, credentials, app_len);
        app[app_len] = '\0';
        client = praas_client_connect_auth(argv[1], app, "invoke.c", colon + 1, 10000, err, sizeof err);
    } else {
        client = praas_client_connect(argv[1], 10000, err, sizeof err);
    }
    if (client == NULL) {
        fprintf(stderr, "%s\n", err);
        free(owned);
        return PRAAS_ERR_UNAVAILABLE;
    }
    const char *spin = getenv("PRAAS_SPIN_US");
    if (spin != NULL && praas_client_set_spin(client, (uint32_t)strtoul(spin, NULL, 10)) != PRAAS_OK) {
        fprintf(stderr, "cannot set the polling time\n");
    }
    uint8_t *output = NULL;
    size_t output_len = 0;
    int32_t status = praas_client_invoke(client, argv[2], input, input_len, &output, &output_len, err, sizeof err);
    if (status == PRAAS_OK) {
        fwrite(output, 1, output_len, stdout);
    } else {
        fprintf(stderr, "%s (status %d)\n", err, status);
    }
    praas_client_free_output(output, output_len);
    praas_client_close(client);
    free(owned);
    return status;
}
