#!/usr/bin/perl
# Test worker that lies about its responses, chosen by PATH_INFO:
#   /long      declares Content-Length: 5 and writes more (a character-vs-byte bug)
#   /short     declares Content-Length: 100 and writes 3 bytes
#   /status    answers with Status: 999
#   /stream    writes forever, a line every 10 ms, until psd stops asking
#   other      "pid=PID count=N" with an honest Content-Length
use strict;
use warnings;
use FCGI;
use Time::HiRes qw(sleep);

my $count   = 0;
my $request = FCGI::Request();
# psd closing the connection is how a FastCGI worker learns that its
# client went away: the next write raises SIGPIPE.
my $gone = 0;
$SIG{PIPE} = sub { $gone = 1 };

while ($request->Accept() >= 0) {
    my $path = $ENV{PATH_INFO} // '';
    $count++;
    if ($path eq '/long') {
        print "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
            . "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nspliced!";
    } elsif ($path eq '/short') {
        print "Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc";
    } elsif ($path eq '/status') {
        print "Status: 999 Nonsense\r\nContent-Type: text/plain\r\n\r\nodd";
    } elsif ($path eq '/stream') {
        print "Content-Type: text/plain\r\n\r\n";
        $request->Flush();
        $gone = 0;
        for my $i (1 .. 100_000) {
            print "line $i\n";
            $request->Flush();
            last if $gone;
            sleep 0.01;
        }
    } else {
        my $body = "pid=$$ count=$count\n";
        printf "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", length $body, $body;
    }
}
