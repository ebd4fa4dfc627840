/* fuzz_model.c: libFuzzer harness for model_parse (model.c): the header, layout and size checks that
 * model_open runs on the mapped model.bin, here on the input's bytes themselves (model_parse only
 * reads them). No file and no mapping per input: with them (a memfd, mmap, munmap) most of each
 * execution was system calls. A refusal must say why in one line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    Model m;
    char err[512] = "";
    if (model_parse(&m, (void *)data, n, "fuzz.bin", err, sizeof err) == 0) free(m.weights.layers);
    else if (!err[0] || strchr(err, '\n')) abort();
    return 0;
}
