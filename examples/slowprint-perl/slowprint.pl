#!/usr/bin/perl
# Continuity's eg/slowprint.pl as a psd FastCGI worker: prints a line, waits,
# prints the next. psd streams each line to the browser as it is flushed.
#   ?lines=N&ms=M   (defaults: 5 lines, 1000 ms apart)
use strict;
use warnings;
use FCGI;
use Time::HiRes qw(sleep time);

my $request = FCGI::Request();
while ($request->Accept() >= 0) {
    my %q = map { split /=/, $_, 2 } grep { /=/ } split /&/, ($ENV{QUERY_STRING} // '');
    my $lines = $q{lines} // 5;
    my $ms    = $q{ms}    // 1000;
    print "Content-Type: text/plain\r\n\r\n";
    for my $i (1 .. $lines) {
        printf "line %d at %.3f\n", $i, time;
        $request->Flush();
        sleep($ms / 1000) if $i < $lines;
    }
}
