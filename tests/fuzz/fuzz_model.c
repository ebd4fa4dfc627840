/* fuzz_model.c: libFuzzer harness for model_open (model.c): the header, layout and size checks
 * of model.bin on arbitrary bytes. model_open takes a path, so the bytes go to a memfd (no disk). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    static int fd = -1;
    if (fd < 0 && (fd = memfd_create("fuzz_model", 0)) < 0) abort();
    if (ftruncate(fd, 0) || pwrite(fd, data, n, 0) != (ssize_t)n) abort();
    char path[64], err[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    Model m;
    if (model_open(&m, path, err, sizeof err) == 0) model_close(&m);
    return 0;
}
