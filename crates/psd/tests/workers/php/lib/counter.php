<?php
// One more visit in this session's count: POST ?add=1 on the session's
// state API answers the new sum, atomically.
function psd_count_up(): int
{
    $url = $_SERVER['PSD_STATE_URL'] . 'count?add=1';
    $context = stream_context_create(['http' => ['method' => 'POST', 'ignore_errors' => true]]);
    return (int) file_get_contents($url, false, $context);
}
