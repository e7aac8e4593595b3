/* The benchmarks' FastCGI worker, in C on libfcgi: a per-process counter.
 * Run by psd (one process per session), by spawn-fcgi (a pool behind nginx),
 * or directly; fd 0 is its listening socket in every case. */
#include <fcgiapp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    FCGX_Request request;
    unsigned long count = 0;
    FCGX_Init();
    FCGX_InitRequest(&request, 0, 0);
    while (FCGX_Accept_r(&request) >= 0) {
        const char *session = FCGX_GetParam("PSD_SESSION_ID", request.envp);
        count++;
        FCGX_FPrintF(request.out,
                     "Content-Type: text/plain\r\n\r\npid=%d count=%lu session=%s\n",
                     (int)getpid(), count, session ? session : "-");
        FCGX_Finish_r(&request);
    }
    return 0;
}
