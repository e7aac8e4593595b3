<?php
// A multi-file PHP app run by one php-cgi per session (psd's DocumentRoot).
// PHP forgets everything between requests; the count lives in the session's
// state (PSD_STATE_URL), which lib/counter.php reaches over plain HTTP.
require __DIR__ . '/lib/counter.php';

header('Content-Type: text/plain');
$count = psd_count_up();
echo 'pid=', getmypid(), ' count=', $count,
    ' script=', $_SERVER['SCRIPT_NAME'], ' info=', $_SERVER['PATH_INFO'] ?? '',
    ' file=', basename($_SERVER['SCRIPT_FILENAME']), "\n";
