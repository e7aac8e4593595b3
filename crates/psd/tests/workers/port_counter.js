// An HTTP worker as most Node apps are written: it binds process.env.PORT
// itself (psd's `WorkerListen port`). One process per session, so `count`
// is the session's own.
const http = require('http');
let count = 0;
http.createServer((req, res) => {
  count += 1;
  res.setHeader('Content-Type', 'text/plain');
  res.end(`pid=${process.pid} count=${count} session=${req.headers['x-psd-session-id']} path=${req.url}\n`);
}).listen(Number(process.env.PORT), '127.0.0.1');
