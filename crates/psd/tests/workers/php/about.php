<?php
header('Content-Type: text/plain');
echo 'pid=', getmypid(), ' script=', $_SERVER['SCRIPT_NAME'], ' info=', $_SERVER['PATH_INFO'] ?? '', "\n";
