"""A WSGI app for gunicorn, bound to psd's Unix socket (`WorkerListen unix`,
`gunicorn --bind unix:{socket} wsgi_counter:app`): one per session."""
import os

count = 0


def app(environ, start_response):
    global count
    count += 1
    body = "pid={} count={} session={} path={}\n".format(
        os.getpid(), count, environ.get("HTTP_X_PSD_SESSION_ID"), environ.get("PATH_INFO")
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
