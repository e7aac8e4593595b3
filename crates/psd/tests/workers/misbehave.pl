#!/usr/bin/perl
# Test worker that misbehaves on request, chosen by PATH_INFO:
#   /crash  exits while the request is in progress  /hang   never answers
#   /slow   answers after SLOW_MS milliseconds     other   a counter line
# With IGNORE_TERM=1 in its environment it ignores SIGTERM (to test SIGKILL).
use strict;
use warnings;
use FCGI;
use POSIX ();
use Time::HiRes qw(sleep time);

$SIG{TERM} = 'IGNORE' if $ENV{IGNORE_TERM};
my $count   = 0;
my $request = FCGI::Request();

while ($request->Accept() >= 0) {
    my $path = $ENV{PATH_INFO} // '';
    $count++;
    POSIX::_exit(3) if $path eq '/crash';
    if ($path eq '/hang') {
        sleep 3600;
    }
    my $start = time;
    sleep(($ENV{QUERY_STRING} =~ /ms=(\d+)/ ? $1 : 0) / 1000) if $path eq '/slow';
    printf "Content-Type: text/plain\r\n\r\npid=%d count=%d start=%.3f end=%.3f\n", $$, $count, $start, time;
}
