/* The benchmarks' FastCGI worker, in C on libfcgi: a per-process counter.
 * Run by psd (one process per session), by spawn-fcgi (a pool behind nginx),
 * or directly; fd 0 is its listening socket in every case. With the query
 * `burn=SECONDS` it first spins on the CPU that long: a session computing
 * (bench/neighbours.py). */
#include <fcgiapp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    FCGX_Request request;
    unsigned long count = 0;
    FCGX_Init();
    FCGX_InitRequest(&request, 0, 0);
    while (FCGX_Accept_r(&request) >= 0) {
        const char *session = FCGX_GetParam("PSD_SESSION_ID", request.envp);
        const char *query = FCGX_GetParam("QUERY_STRING", request.envp);
        if (query && strncmp(query, "burn=", 5) == 0) {
            double end = now() + atof(query + 5);
            volatile unsigned long spin = 0;
            while (now() < end)
                for (int i = 0; i < 10000; i++)
                    spin++;
        }
        count++;
        FCGX_FPrintF(request.out,
                     "Content-Type: text/plain\r\n\r\npid=%d count=%lu session=%s\n",
                     (int)getpid(), count, session ? session : "-");
        FCGX_Finish_r(&request);
    }
    return 0;
}
