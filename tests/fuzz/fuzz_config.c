/* libFuzzer target for the configuration parser: any input must load or fail cleanly, without
 * leaks, and a loaded config must validate without crashing. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "wahook/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Give ${...} references something to expand to, aliases included. */
    setenv("WEBHOOK_SECRET", "fuzz-secret", 1);
    setenv("NEXT_EVOLUTION_API_KEY", "fuzz-key", 1);
    setenv("WH_FUZZ_PORT", "8080", 1);
    unsetenv("WEBHOOK_SECRET_PREVIOUS");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    wh_config_t conf;
    char err[512];
    if (wh_config_load_string(&conf, "fuzz.conf", (const char *)data, size, err, sizeof(err)) ==
        0)
        (void)wh_config_validate(&conf, err, sizeof(err));
    wh_config_free(&conf);
    return 0;
}
