/* fuzz_jsonl.c: libFuzzer harness for parse_request (jsonl.c), the reader of one JSONL request.
 * Batch mode only hands it lines that are valid UTF-8 without a NUL byte, NUL-terminated; the
 * harness keeps to that contract and throws other inputs away. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (memchr(data, 0, n) || memchr(data, '\n', n) || utf8_invalid_at(data, n) >= 0) return 0;
    char *line = malloc(n + 1);
    if (!line) return 0;
    memcpy(line, data, n);
    line[n] = '\0';
    Request r = {0};
    char err[512];
    parse_request(line, n, &r, err, sizeof err);
    request_free(&r);
    free(line);
    return 0;
}
