#!/usr/bin/perl
# A CGI.pm script as a psd worker, through PSD::CGI (a CGI::Fast subclass):
# the count lives in the session's state, so it survives the worker and psd;
# `?name=…` shows that each request's parameters are its own.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../clients/perl";
use PSD::CGI;

while (my $q = PSD::CGI->new) {
    my $count = ($q->state_get('count') // 0) + 1;
    $q->state_put('count', $count);
    my $name = $q->param('name') // '-';
    print $q->header('text/plain'),
      "pid=$$ count=$count name=$name resumed=", ($ENV{PSD_RESUMED} // 0),
      " session=", ($ENV{PSD_SESSION_ID} // ''), "\n";
}
